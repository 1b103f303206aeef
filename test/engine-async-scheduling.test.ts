// Async scheduling end to end on the CPU backend (a real model through LLM, the runner's
// launch/collect and the device-side placeholder gather): every output equals the synchronous
// engine's, token for token, and no block is left allocated.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LLM, type LLMOptions } from '../src/api/llm.js';
import type { CompletionOutput } from '../src/api/outputs.js';
import type { SamplingParamsInit } from '../src/sampling/params.js';
import { fixtureDir } from './helpers/golden.js';

const DIR = fixtureDir('llama-gqa-llama3');

interface Run {
  outs: CompletionOutput[];
  numLaunches: number;
  numPreemptions: number;
}

async function load(asyncScheduling: boolean, options: LLMOptions): Promise<{ llm: LLM; launches: () => number }> {
  const llm = await LLM.load(DIR, { maxNumSeqs: 8, maxNumBatchedTokens: 64, ...options, asyncScheduling });
  assert.equal(llm.engine.asyncScheduling, asyncScheduling);
  const runner = llm.runner;
  const launch = runner.launch.bind(runner);
  let n = 0;
  runner.launch = (batch) => {
    n++;
    return launch(batch);
  };
  return { llm, launches: () => n };
}

async function finish(llm: LLM): Promise<void> {
  assert.equal(llm.engine.hasUnfinishedRequests(), false);
  llm.engine.checkInvariants();
  assert.equal(llm.stats().numKvBlocksUsed, 0, 'no block left allocated');
  await llm.close();
}

/** Every prompt at once, each with its own params. */
async function generateAll(asyncScheduling: boolean, prompts: number[][], params: SamplingParamsInit[], options: LLMOptions = {}): Promise<Run> {
  const { llm, launches } = await load(asyncScheduling, options);
  const outs = await Promise.all(prompts.map((p, i) => llm.generate([p], params[i])));
  const run = { outs: outs.map((o) => o[0]!.outputs[0]!), numLaunches: launches(), numPreemptions: llm.stats().numPreemptions };
  await finish(llm);
  return run;
}

function sameOutputs(a: Run, b: Run): void {
  a.outs.forEach((o, i) => {
    const p = b.outs[i]!;
    assert.deepEqual(o.tokenIds, p.tokenIds, `request ${i}`);
    assert.equal(o.text, p.text, `request ${i}`);
    assert.equal(o.finishReason, p.finishReason, `request ${i}`);
    assert.equal(o.stopReason, p.stopReason, `request ${i}`);
  });
}

function prompts(n: number, seed: number, prefix: number[] = []): number[][] {
  return Array.from({ length: n }, (_, i) => [...prefix, ...Array.from({ length: 2 + ((i * 7 + seed) % 23) }, (_, j) => 3 + ((i * 31 + j * 17 + seed) % 370))]);
}

test('greedy and seeded requests ending by max_tokens, stop strings and stop ids mid-batch: async equals sync', async () => {
  const ps = prompts(10, 1);
  const base: SamplingParamsInit[] = ps.map((_, i) => ({
    maxTokens: 8 + ((i * 5) % 20),
    ignoreEos: true,
    ...(i % 3 === 0 ? { temperature: 0 } : { temperature: 0.8, topP: 0.9, seed: 100 + i }),
  }));
  // stops taken from what each request says without them, so that they end it midway
  const free = await generateAll(false, ps, base);
  const params = base.map((p, i): SamplingParamsInit => {
    const o = free.outs[i]!;
    if (i % 4 === 1 && o.text.length > 6) return { ...p, stop: [o.text.slice(Math.floor(o.text.length / 2), Math.floor(o.text.length / 2) + 3)] };
    if (i % 4 === 2 && o.tokenIds.length > 4) return { ...p, stopTokenIds: [o.tokenIds[3]!], ignoreEos: false };
    return p;
  });
  const sync = await generateAll(false, ps, params);
  const overlapped = await generateAll(true, ps, params);
  assert.ok(overlapped.numLaunches > 0, 'steps were launched ahead');
  assert.equal(sync.numLaunches, 0);
  sameOutputs(overlapped, sync);
  const stopped = sync.outs.filter((o, i) => o.finishReason === 'stop' && o.tokenIds.length < (params[i]!.maxTokens as number));
  assert.ok(stopped.length >= 2, `some requests stop midway (${stopped.length})`);
  assert.ok(sync.outs.some((o) => o.finishReason === 'length'));
});

test('preemption under a tiny pool and prefix reuse: async equals sync, nothing leaks', async () => {
  const shared = Array.from({ length: 40 }, (_, j) => 5 + ((j * 13) % 300));
  const ps = prompts(12, 2, shared);
  const params = ps.map((_, i): SamplingParamsInit => ({ maxTokens: 12 + (i % 5), ignoreEos: true, temperature: 0.9, seed: i }));
  const roomy = await generateAll(false, ps, params);
  const tight = await generateAll(true, ps, params, { numKvBlocks: 12 });
  assert.equal(roomy.numPreemptions, 0);
  assert.ok(tight.numPreemptions > 0, 'the tiny pool preempted');
  sameOutputs(tight, roomy);

  // a prompt seen before reuses its cached blocks, with the same tokens
  const { llm } = await load(true, {});
  const [first] = await llm.generate([ps[0]!], params[0]);
  const [again] = await llm.generate([ps[0]!], params[0]);
  assert.ok(again!.numCachedTokens >= 32, `cached prompt tokens: ${again!.numCachedTokens}`);
  assert.deepEqual(again!.outputs[0]!.tokenIds, first!.outputs[0]!.tokenIds);
  assert.deepEqual(first!.outputs[0]!.tokenIds, roomy.outs[0]!.tokenIds);
  await finish(llm);
});

test('aborts while steps are in flight free every block and leave the other requests unchanged', async () => {
  const ps = prompts(6, 3);
  const params: SamplingParamsInit = { maxTokens: 16, ignoreEos: true, temperature: 0.7, seed: 5 };
  const sync = await generateAll(false, ps, ps.map(() => params));
  const { llm } = await load(true, {});
  const cut = async (p: number[], after: number): Promise<number> => {
    let n = 0;
    for await (const d of llm.stream(p, params)) {
      n += d.tokenIds.length;
      if (n >= after) break; // aborts the request
    }
    return n;
  };
  const [kept, cutA, cutB] = await Promise.all([
    Promise.all(ps.slice(0, 4).map((p) => llm.generate([p], params))),
    cut(ps[4]!, 2),
    cut(ps[5]!, 5),
  ]);
  assert.equal(cutA, 2);
  assert.equal(cutB, 5);
  kept.forEach((o, i) => assert.deepEqual(o[0]!.outputs[0]!.tokenIds, sync.outs[i]!.tokenIds, `request ${i}`));
  // the engine loop stops once nothing is left: wait for it to settle
  for (let i = 0; i < 50 && llm.engine.hasUnfinishedRequests(); i++) await new Promise((r) => setTimeout(r, 5));
  await finish(llm);
});

test('rows with penalties or min_tokens are launched too (the token in flight counted from the last launch): async equals sync', async () => {
  const ps = prompts(8, 4);
  const combos: SamplingParamsInit[] = [
    { repetitionPenalty: 1.5 }, { presencePenalty: 1.2 }, { frequencyPenalty: 0.9 }, { repetitionPenalty: 0.8, presencePenalty: -0.5, frequencyPenalty: 0.3 },
    { minTokens: 6 }, { minTokens: 9, repetitionPenalty: 1.3 }, {}, { frequencyPenalty: 2 },
  ];
  const params = ps.map((_, i): SamplingParamsInit => ({ maxTokens: 12, temperature: i % 2 ? 0.8 : 0, seed: 40 + i, ...combos[i]! }));
  const sync = await generateAll(false, ps, params, { maxNumSeqs: 4 });
  const overlapped = await generateAll(true, ps, params, { maxNumSeqs: 4 });
  assert.equal(sync.numLaunches, 0);
  assert.ok(overlapped.numLaunches >= 12, `penalized steps were launched (${overlapped.numLaunches} launches)`);
  sameOutputs(overlapped, sync);
  // the penalties did something: without them the greedy rows read differently
  const plain = await generateAll(false, ps, params.map((p) => ({ ...p, repetitionPenalty: 1, presencePenalty: 0, frequencyPenalty: 0 })), { maxNumSeqs: 4 });
  assert.ok(plain.outs.some((o, i) => o.tokenIds.join() !== sync.outs[i]!.tokenIds.join()), 'penalties changed some output');
});
