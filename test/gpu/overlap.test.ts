// Async scheduling on the CUDA backend: the placeholder gather against the CPU reference, the
// pinned download, and the engine with async scheduling on vs off, token for token (decode
// steps as CUDA graphs with the gather inside, seeded sampling and logprobs on the device).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LLM } from '../../src/api/llm.js';
import { CpuBackend, cpuData } from '../../src/backends/cpu/cpu-backend.js';
import { CudaBackend } from '../../src/backends/cuda/cuda-backend.js';
import type { SamplingParamsInit } from '../../src/sampling/params.js';
import { fixtureDir } from '../helpers/golden.js';
import { rng, SEED } from './cuda-harness.js';

const available = CudaBackend.isAvailable();
const skip = available ? false : `no CUDA device: ${CudaBackend.unavailableReason()}`;

test('gatherTokenIds on CUDA equals the CPU reference', { skip }, async () => {
  const gpu = CudaBackend.create();
  const cpu = new CpuBackend();
  const r = rng(SEED);
  try {
    for (const [numTokens, numSrc] of [[1, 1], [7, 3], [300, 256], [8192, 256]] as const) {
      const tokens = Int32Array.from({ length: numTokens }, () => Math.floor(r() * 1000));
      const src = Int32Array.from({ length: numSrc }, () => Math.floor(r() * 128000));
      const index = Int32Array.from({ length: numTokens }, () => (r() < 0.5 ? -1 : Math.floor(r() * numSrc)));
      const [gt, ct] = [gpu.fromI32([numTokens], tokens), cpu.fromI32([numTokens], tokens)];
      gpu.gatherTokenIds(gt, gpu.fromI32([numSrc], src), gpu.fromI32([numTokens], index), numTokens);
      cpu.gatherTokenIds(ct, cpu.fromI32([numSrc], src), cpu.fromI32([numTokens], index), numTokens);
      assert.deepEqual([...(await gpu.downloadI32(gt))], [...cpuData(ct)], `${numTokens} tokens from ${numSrc} (seed ${SEED})`);
    }
  } finally {
    gpu.dispose();
  }
});

test('a pinned download lands once the event after it has completed', { skip }, async () => {
  const gpu = CudaBackend.create();
  try {
    const data = Int32Array.from({ length: 10_752 }, (_, i) => i * 7 - 3);
    const t = gpu.fromI32([data.length], data);
    const pinned = gpu.allocPinned(4 * data.length);
    const done = gpu.createEvent({ timing: false });
    pinned.copyFromAsync(t, 4 * data.length, gpu.stream);
    done.record(gpu.stream);
    while (!done.query()) await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual([...new Int32Array(pinned.bytes, 0, data.length)], [...data]);
    done.destroy();
    pinned.free();
  } finally {
    gpu.dispose();
  }
});

/**
 * Every request at once, within maxNumSeqs and the token budget, ending by max_tokens only:
 * both modes run the same batches, so the same kernels give the same tokens.
 */
async function run(asyncScheduling: boolean): Promise<{ ids: number[][]; logprobs: number[][]; numLaunches: number; numGraphs: number; idle: number; steps: number }> {
  const llm = await LLM.load(fixtureDir('llama-gqa-llama3'), { device: 'cuda', maxNumSeqs: 16, maxNumBatchedTokens: 512, asyncScheduling });
  const runner = llm.runner;
  const launch = runner.launch.bind(runner);
  let numLaunches = 0;
  runner.launch = (batch) => {
    numLaunches++;
    return launch(batch);
  };
  const prompts = Array.from({ length: 12 }, (_, i) => Array.from({ length: 3 + ((i * 11) % 29) }, (_, j) => 3 + ((i * 37 + j * 13) % 370)));
  const params = prompts.map((_, i): SamplingParamsInit => ({
    maxTokens: 20 + ((i * 7) % 25),
    ignoreEos: true,
    ...(i % 3 === 0 ? { temperature: 0 } : { temperature: 0.8, topP: 0.95, topK: 50, seed: 1000 + i }),
    ...(i % 4 === 1 ? { logprobs: 3 } : {}),
    // rows reading the token history launch too: the kernel counts the token in flight from the step's input ids
    ...(i % 4 === 2 ? { repetitionPenalty: 1.3, presencePenalty: 0.4, frequencyPenalty: 0.6 } : {}),
    ...(i === 5 ? { minTokens: 30, ignoreEos: false } : {}),
  }));
  runner.stepTiming(true);
  const outs = await Promise.all(prompts.map((p, i) => llm.generate([p], params[i])));
  const timing = runner.stepTiming();
  assert.equal(llm.stats().numKvBlocksUsed, 0);
  const result = {
    ids: outs.map((o) => [...o[0]!.outputs[0]!.tokenIds]),
    logprobs: outs.map((o) => (o[0]!.outputs[0]!.logprobs ?? []).map((l) => l.logprob)),
    numLaunches,
    numGraphs: runner.numCapturedGraphs,
    idle: timing.hostGapFraction,
    steps: timing.numSteps,
  };
  await llm.close();
  return result;
}

test('async scheduling on CUDA gives the synchronous tokens, token for token', { skip }, async () => {
  const sync = await run(false);
  const overlapped = await run(true);
  assert.equal(sync.numLaunches, 0);
  assert.ok(overlapped.numLaunches > 40, `launched steps: ${overlapped.numLaunches}`);
  assert.ok(overlapped.numGraphs > 0, 'decode steps replayed graphs (the gather inside)');
  overlapped.ids.forEach((ids, i) => assert.deepEqual(ids, sync.ids[i], `request ${i}`));
  overlapped.logprobs.forEach((lp, i) => {
    assert.equal(lp.length, sync.logprobs[i]!.length);
    lp.forEach((x, k) => assert.ok(Math.abs(x - sync.logprobs[i]![k]!) < 1e-4, `request ${i} token ${k}: ${x} vs ${sync.logprobs[i]![k]}`));
  });
  for (const r of [sync, overlapped]) assert.ok(r.steps > 0 && r.idle >= 0 && r.idle < 1, `steps ${r.steps}, idle ${r.idle}`);
  console.log(`device idle: sync ${(100 * sync.idle).toFixed(1)}% over ${sync.steps} steps, async ${(100 * overlapped.idle).toFixed(1)}% over ${overlapped.steps} steps`);
});
