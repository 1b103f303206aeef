// Async scheduling under tensor parallelism (CPU ranks: worker threads): rank 0 launches step n+1
// before collecting step n, and every rank takes rank 0's sampled ids through a broadcast before
// the placeholder gather. Outputs equal the synchronous tp 2 engine's, token for token, with
// preemption, stops mid-batch and aborts; nothing leaks; without the option the group stays sync.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LLM, type LLMOptions } from '../src/api/llm.js';
import type { CompletionOutput } from '../src/api/outputs.js';
import type { TpGroup } from '../src/parallel/tp-group.js';
import type { SamplingParamsInit } from '../src/sampling/params.js';
import { fixtureDir } from './helpers/golden.js';

const DIR = fixtureDir('llama-gqa-llama3');

async function run(asyncScheduling: boolean, ps: number[][], params: SamplingParamsInit[], options: LLMOptions = {}): Promise<{ outs: CompletionOutput[]; launches: number; preemptions: number }> {
  const llm = await LLM.load(DIR, { tp: 2, maxNumSeqs: 8, maxNumBatchedTokens: 64, ...options, asyncScheduling });
  const group = llm.executor as TpGroup;
  const launch = group.launch.bind(group);
  let launches = 0;
  group.launch = (batch) => {
    launches++;
    return launch(batch);
  };
  try {
    const outs = await Promise.all(ps.map((p, i) => llm.generate([p], params[i])));
    assert.equal(llm.stats().numKvBlocksUsed, 0, 'no block left allocated');
    llm.engine.checkInvariants();
    return { outs: outs.map((o) => o[0]!.outputs[0]!), launches, preemptions: llm.stats().numPreemptions };
  } finally {
    await llm.close();
  }
}

function prompts(n: number, seed: number): number[][] {
  return Array.from({ length: n }, (_, i) => Array.from({ length: 3 + ((i * 7 + seed) % 19) }, (_, j) => 3 + ((i * 31 + j * 17 + seed) % 370)));
}

test('tp 2: launched steps (greedy, seeded, penalties, stop ids mid-batch) equal the synchronous group, and steps were launched', async () => {
  const ps = prompts(8, 1);
  const base: SamplingParamsInit[] = ps.map((_, i) => ({
    maxTokens: 6 + ((i * 5) % 12), ignoreEos: true, ...(i % 2 ? { temperature: 0.8, seed: 10 + i } : { temperature: 0 }),
    // rows reading the token history launch too: rank 0 counts the token in flight
    ...(i % 4 === 2 ? { repetitionPenalty: 1.4, frequencyPenalty: 0.5 } : {}),
  }));
  const free = await run(false, ps, base);
  const params = base.map((p, i): SamplingParamsInit => (i % 3 === 1 && free.outs[i]!.tokenIds.length > 3 ? { ...p, stopTokenIds: [free.outs[i]!.tokenIds[2]!], ignoreEos: false } : p));
  const sync = await run(false, ps, params);
  const overlapped = await run(true, ps, params);
  assert.equal(sync.launches, 0, 'without asyncScheduling the group runs every step synchronously');
  assert.ok(overlapped.launches > 0, 'steps were launched ahead');
  overlapped.outs.forEach((o, i) => {
    assert.deepEqual(o.tokenIds, sync.outs[i]!.tokenIds, `request ${i}`);
    assert.equal(o.finishReason, sync.outs[i]!.finishReason, `request ${i}`);
  });
  assert.ok(sync.outs.some((o, i) => o.finishReason === 'stop' && o.tokenIds.length < (params[i]!.maxTokens as number)), 'some request stops midway');
});

test('tp 2: preemption under a tiny pool with steps in flight gives the same tokens', async () => {
  const ps = prompts(10, 2);
  const params = ps.map((_, i): SamplingParamsInit => ({ maxTokens: 10 + (i % 4), ignoreEos: true, temperature: 0.9, seed: i }));
  const roomy = await run(false, ps, params);
  const tight = await run(true, ps, params, { numKvBlocks: 10 });
  assert.ok(tight.preemptions > 0, 'the tiny pool preempted');
  assert.ok(tight.launches > 0);
  tight.outs.forEach((o, i) => assert.deepEqual(o.tokenIds, roomy.outs[i]!.tokenIds, `request ${i}`));
});
