// Tensor parallelism on the CPU (ranks in worker threads over the shared-memory communicator):
// TP = 2 and 4 give the logits of TP = 1 and transformers' greedy tokens through the engine,
// on golden fixtures covering each sharding rule (GQA / replicated KV heads, fused and Conv1D
// QKV, biases, tied and untied heads, parallel residual, post-norm with project_in, ALiBi,
// MoE, q/k norms, soft-capping).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { LLMEngine } from '../src/engine/llm-engine.js';
import { loadModel } from '../src/models/load-model.js';
import { TpGroup } from '../src/parallel/tp-group.js';
import { buildForwardBatch } from '../src/runner/input-builder.js';
import { ModelRunner } from '../src/runner/model-runner.js';
import { makeSamplingParams } from '../src/sampling/index.js';
import { loadGolden } from './helpers/golden.js';

const LOGIT_TOL = 1e-4;
const RUNNER = { numBlocks: 64, blockSize: 16, maxModelLen: 256, maxNumBatchedTokens: 256, maxNumSeqs: 8, maxNumLogits: 256 };
const CASES: readonly [string, number][] = [
  ['llama-linear', 2], ['llama-linear', 4], // 4 heads / 4 KV heads
  ['mistral', 2], ['mistral', 4], // one KV head, replicated
  ['gpt2', 4], // Conv1D, every bias, tied embeddings, learned positions
  ['gptj', 2], // parallel residual, LM head bias
  ['falcon-40b-style', 4], // grouped fused QKV, two norms in parallel
  ['opt-350m-style', 2], // post-norm, project_in / project_out around a 32-wide embedding
  ['bloom', 2], // ALiBi, 6 heads
  ['mixtral', 2], // MoE experts
  ['qwen3', 2], // q / k norms
  ['gemma2', 2], // sandwich norms, soft-capping
];

for (const [name, tp] of CASES) {
  test(`${name} at tp ${tp}: TP = 1 logits and transformers' greedy tokens`, async () => {
    const g = loadGolden(name);
    const backend = new CpuBackend();
    const model = loadModel(g.dir, backend);
    const ref = new ModelRunner(backend, model.spec, model.weights, RUNNER);
    const group = await TpGroup.start({ modelDir: g.dir, tp, runner: RUNNER });
    try {
      // every prompt in one batch, logits at every position
      let next = 0;
      const entries = g.cases.map((c) => {
        const n = Math.ceil(c.promptIds.length / 16);
        const seq = { tokenIds: c.promptIds, numCachedTokens: 0, blockTable: Array.from({ length: n }, (_, j) => next + j) };
        next += n;
        return { seq, numNewTokens: c.promptIds.length };
      });
      const fb = buildForwardBatch(entries, 16, ref.maxBlocksPerSeq);
      const all = { ...fb, logitsIndices: Int32Array.from({ length: fb.numTokens }, (_, i) => i) };
      const want = await ref.forward(all);
      const got = await group.forward(all);
      let err = 0;
      for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(want[i]! - got[i]!));
      assert.ok(err < LOGIT_TOL, `${name} tp ${tp}: max |logit - TP1 logit| ${err}`);

      // greedy decoding through the batching engine, rank 0 sampling
      const engine = new LLMEngine(group, { maxNumSeqs: 8, maxNumBatchedTokens: 256 });
      const params = makeSamplingParams({ temperature: 0, maxTokens: 24, ignoreEos: true });
      g.cases.forEach((c, i) => engine.addRequest({ requestId: String(i), promptTokenIds: c.promptIds, params }));
      const outputs = new Map<string, number[]>();
      while (engine.hasUnfinishedRequests()) for (const o of await engine.step()) outputs.set(o.requestId, o.outputTokenIds);
      g.cases.forEach((c, i) => assert.deepEqual(outputs.get(String(i)), c.greedyIds, `${name} tp ${tp} case ${i}`));
    } finally {
      await group.dispose();
      ref.dispose();
    }
  });
}
