// NCCL tensor parallelism on 2 (and 4) GPUs; skips without at least 2. Collectives through the
// koffi bindings (f32 and bf16, all-gather by columns over 1 and 2 rows), the TP group against
// TP = 1 on the golden fixtures (the group's all-reduces on the custom kernel where peer access allows,
// PEREGRINE_CUSTOM_ALLREDUCE=0 for NCCL alone), and a dead worker process turning a step into
// PGN_ERR_ENGINE_DEAD (the custom kernel's abort word releasing rank 0's wait).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { CudaBackend } from '../../src/backends/cuda/cuda-backend.js';
import { loadModel } from '../../src/models/load-model.js';
import { gpuCount } from './cuda-harness.js';
import { ncclUniqueId } from '../../src/parallel/nccl.js';
import { TpGroup } from '../../src/parallel/tp-group.js';
import { buildForwardBatch } from '../../src/runner/input-builder.js';
import { ModelRunner } from '../../src/runner/model-runner.js';
import { simpleGenerate } from '../../src/runner/simple-generate.js';
import { LLM } from '../../src/api/llm.js';
import { LLMEngine } from '../../src/engine/llm-engine.js';
import { makeSamplingParams } from '../../src/sampling/index.js';
import { expectedCollectives, type CollectiveResults } from '../helpers/comm-rank.js';
import { loadGolden } from '../helpers/golden.js';

process.env.NCCL_NVLS_ENABLE = '0';

const GPUS = gpuCount();
const skip = GPUS >= 2 ? false : `needs 2 GPUs, found ${GPUS}`;
const RANK = fileURLToPath(new URL('./nccl-rank.js', import.meta.url));
const START_RANK = fileURLToPath(new URL('./tp-start-rank.js', import.meta.url));
const RUNNER = { numBlocks: 64, blockSize: 16, maxModelLen: 256, maxNumBatchedTokens: 256, maxNumSeqs: 8, maxNumLogits: 256 };
/** max |TP logit - TP1 logit| / max |logit| in bf16 (different summation order) */
const REL_TOL = 4e-2;

test('NCCL all-reduce, all-gather and broadcast across 2 processes', { skip }, async () => {
  const id = [...ncclUniqueId()];
  const size = 2;
  const results = await Promise.all(Array.from({ length: size }, (_, rank) => new Promise<{ f32: CollectiveResults; bf16: CollectiveResults; error?: string }>((resolve, reject) => {
    const child = fork(RANK, [], { execArgv: [], env: { ...process.env, NCCL_NVLS_ENABLE: '0' } });
    child.once('message', (m) => resolve(m as never));
    child.once('exit', (code) => reject(new Error(`rank ${rank} exited (code ${code}) without results`)));
    child.send({ id, rank, size });
  })));
  for (const [rank, r] of results.entries()) {
    assert.equal(r.error, undefined, `rank ${rank}: ${r.error}`);
    assert.deepEqual(r.f32, expectedCollectives(size), `rank ${rank} f32`);
    assert.deepEqual(r.bf16, expectedCollectives(size), `rank ${rank} bf16`);
  }
});

for (const [name, tp] of [['llama-linear', 2], ['mistral', 2], ['llama-linear', 4], ['gpt2', 2], ['mixtral', 2]] as const) {
  test(`${name} at tp ${tp} on CUDA: TP = 1 logits within bf16 tolerance, same greedy tokens away from near-ties`, { skip: GPUS >= tp ? false : `needs ${tp} GPUs, found ${GPUS}` }, async () => {
    const g = loadGolden(name);
    const backend = CudaBackend.create({ deviceId: 0 });
    const model = loadModel(g.dir, backend);
    const ref = new ModelRunner(backend, model.spec, model.weights, { ...RUNNER, enableCudaGraphs: false });
    const group = await TpGroup.start({ modelDir: g.dir, tp, device: 'cuda', runner: RUNNER });
    try {
      for (const [ci, c] of g.cases.entries()) {
        const ids = [...c.promptIds];
        const fb = buildForwardBatch([{ seq: { tokenIds: ids, numCachedTokens: 0, blockTable: Array.from({ length: Math.ceil(ids.length / 16) }, (_, j) => j) }, numNewTokens: ids.length }], 16, 16);
        const all = { ...fb, logitsIndices: Int32Array.from(ids, (_, i) => i) };
        const want = await ref.forward(all);
        const got = await group.forward(all);
        let err = 0, scale = 0;
        const V = model.spec.vocabSize;
        const rowErr = ids.map((_, r) => {
          let e = 0;
          for (let i = r * V; i < (r + 1) * V; i++) { e = Math.max(e, Math.abs(want[i]! - got[i]!)); scale = Math.max(scale, Math.abs(want[i]!)); }
          err = Math.max(err, e);
          return e;
        });
        const rows = rowErr.map((e) => (e / scale).toFixed(3)).join(' ');
        if (model.spec.moe) {
          // a token whose top-k experts are a near-tie may route differently at bf16 (and so may the tokens after it): most positions must agree
          const sorted = [...rowErr].sort((a, b) => a - b);
          assert.ok(sorted[Math.floor(sorted.length / 2)]! / scale < REL_TOL, `${name} tp ${tp} case ${ci}: median row |error| over scale ${scale}; rows: ${rows}`);
        } else {
          assert.ok(err / scale < REL_TOL, `${name} tp ${tp} case ${ci}: max |error| ${err} of scale ${scale}; rows: ${rows}`);
        }
        // greedy ids are decided by the model only where no top-2 gap is within the error
        if (c.minGreedyMargin <= 4 * err) continue;
        const single = await simpleGenerate(ref, [c.promptIds], { temperature: 0, maxTokens: c.greedyIds.length, ignoreEos: true });
        const engine = new LLMEngine(group, { maxNumSeqs: 8, maxNumBatchedTokens: 256 });
        engine.addRequest({ requestId: 'a', promptTokenIds: c.promptIds, params: makeSamplingParams({ temperature: 0, maxTokens: c.greedyIds.length, ignoreEos: true }) });
        let greedy: number[] = [];
        while (engine.hasUnfinishedRequests()) for (const o of await engine.step()) greedy = o.outputTokenIds;
        assert.deepEqual(greedy, single.tokenIds[0], `${name} tp ${tp} case ${ci}: greedy ids`);
      }
    } finally {
      await group.dispose();
      ref.dispose();
      backend.dispose();
    }
  });
}

test('a worker process killed mid-run fails the step with PGN_ERR_ENGINE_DEAD, without a hang', { skip }, async () => {
  const g = loadGolden('llama-linear');
  const group = await TpGroup.start({ modelDir: g.dir, tp: 2, device: 'cuda', runner: RUNNER, exitAtStep: { rank: 1, step: 1 } });
  try {
    const fb = buildForwardBatch([{ seq: { tokenIds: [1, 2, 3], numCachedTokens: 0, blockTable: [0] }, numNewTokens: 3 }], 16, 16);
    await group.forward(fb);
    const t0 = Date.now();
    await assert.rejects(group.forward(fb), (e: any) => e.code === 'PGN_ERR_ENGINE_DEAD' && /rank 1 exited/.test(e.message));
    assert.ok(Date.now() - t0 < 30_000);
    await assert.rejects(group.forward(fb), (e: any) => e.code === 'PGN_ERR_ENGINE_DEAD');
  } finally {
    await group.dispose();
  }
});

test('tp 2 through LLM: steps launched ahead (async scheduling, the CUDA default) give the synchronous group\'s tokens', { skip }, async () => {
  const g = loadGolden('llama-linear');
  const prompts = g.cases.map((c) => [...c.promptIds]);
  const params = prompts.map((_, i) => ({ maxTokens: 12 + 3 * i, ignoreEos: true, ...(i % 2 ? { temperature: 0.8, seed: 7 + i } : { temperature: 0 }) }));
  const run = async (asyncScheduling: boolean) => {
    const llm = await LLM.load(g.dir, { device: 'cuda', tp: 2, maxNumSeqs: 8, maxNumBatchedTokens: 256, maxModelLen: 256, numKvBlocks: 64, asyncScheduling });
    try {
      const outs = await Promise.all(prompts.map((p, i) => llm.generate([p], params[i])));
      assert.equal(llm.stats().numKvBlocksUsed, 0, 'no block left allocated');
      return outs.map((o) => o[0]!.outputs[0]!.tokenIds);
    } finally {
      await llm.close();
    }
  };
  const sync = await run(false);
  const ahead = await run(true);
  ahead.forEach((ids, i) => assert.deepEqual(ids, sync[i], `request ${i}`));
});

test('a worker that dies before joining NCCL fails TpGroup.start with PGN_ERR_ENGINE_DEAD, without a hang', { skip }, async () => {
  // in a child process: rank 0's NCCL init thread stays blocked for the rank that never came (NCCL has no
  // way to cancel a pending init), so only an exiting process is fully clean afterwards (as the CLI does)
  const child = fork(START_RANK, [], { execArgv: [], env: { ...process.env, NCCL_NVLS_ENABLE: '0' } });
  const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
  const r = await new Promise<{ code?: string; message?: string; ms?: number; started?: boolean }>((resolve) => {
    child.once('message', (m) => resolve(m as never));
    child.once('exit', (code, signal) => resolve({ message: `exited (${signal ?? code}) without a report` }));
  });
  clearTimeout(timer);
  child.kill('SIGKILL');
  assert.equal(r.code, 'PGN_ERR_ENGINE_DEAD', JSON.stringify(r));
  assert.match(r.message ?? '', /rank 1/);
  assert.ok((r.ms ?? Infinity) < 60_000, `rank 0 stopped waiting once rank 1 was gone (${r.ms} ms)`);
});
