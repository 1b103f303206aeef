// Prompt logprobs (vLLM's prompt_logprobs) through the library API on the CPU backend: every
// prompt position's logprob and top-n equal log_softmax of transformers' prompt logits, whole,
// split over chunks, over a prefix-cache hit, and with few logits rows per step.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LLM } from '../src/api/llm.js';
import type { OutputLogprob } from '../src/api/outputs.js';
import { isPeregrineError } from '../src/errors.js';
import { logSumExp } from '../src/sampling/sampler.js';
import { loadGolden, type GoldenCase } from './helpers/golden.js';

const TOL = 1e-4;
const TOP_N = 3;

/** Checks `got` against log_softmax of the case's prompt logits (row p - 1 scores token p). */
function checkPromptLogprobs(got: ReadonlyArray<OutputLogprob | null> | null, c: GoldenCase, vocab: number, label: string): void {
  assert.ok(got, `${label}: no prompt logprobs`);
  assert.equal(got.length, c.promptIds.length, label);
  assert.equal(got[0], null, `${label}: position 0 has none`);
  for (let p = 1; p < c.promptIds.length; p++) {
    const row = c.logits.subarray((p - 1) * vocab, p * vocab);
    const lse = logSumExp(row);
    const lp: OutputLogprob = got[p]!;
    assert.equal(lp.tokenId, c.promptIds[p], `${label} position ${p}`);
    assert.ok(Math.abs(lp.logprob - (row[lp.tokenId]! - lse)) < TOL, `${label} position ${p}: ${lp.logprob} vs ${row[lp.tokenId]! - lse}`);
    assert.equal(lp.topLogprobs.length, TOP_N);
    const best = [...row.keys()].sort((a, b) => row[b]! - row[a]!).slice(0, TOP_N);
    lp.topLogprobs.forEach((t, k) => {
      assert.ok(Math.abs(t.logprob - (row[best[k]!]! - lse)) < TOL, `${label} position ${p} top ${k}`);
    });
  }
}

test('prompt logprobs equal log_softmax of the golden prompt logits, whole and in chunks', async () => {
  const g = loadGolden('qwen2');
  const longest = Math.max(...g.cases.map((c) => c.promptIds.length));
  for (const maxNumBatchedTokens of [256, 5]) {
    const llm = await LLM.load(g.dir, { maxNumSeqs: 4, maxNumBatchedTokens });
    const outs = await llm.generate(g.cases.map((c) => c.promptIds), { temperature: 0, maxTokens: 2, ignoreEos: true, promptLogprobs: TOP_N });
    outs.forEach((o, i) => checkPromptLogprobs(o.promptLogprobs, g.cases[i]!, g.vocabSize, `budget ${maxNumBatchedTokens} case ${i}`));
    assert.ok(longest > maxNumBatchedTokens || maxNumBatchedTokens === 256);
    // outputs are unchanged by the extra rows
    outs.forEach((o, i) => assert.deepEqual(o.outputs[0]!.tokenIds, g.cases[i]!.greedyIds.slice(0, 2)));
    await llm.close();
  }
});

test('a request with prompt logprobs recomputes a prompt the prefix cache holds', async () => {
  const g = loadGolden('qwen2');
  const c = g.cases.reduce((a, b) => (b.promptIds.length > a.promptIds.length ? b : a));
  assert.ok(c.promptIds.length > 17, 'needs a full block to cache');
  const llm = await LLM.load(g.dir, { maxNumSeqs: 2, blockSize: 16 });
  const plain = await llm.generate([c.promptIds], { temperature: 0, maxTokens: 1 });
  assert.equal(plain[0]!.promptLogprobs, null);
  const again = await llm.generate([c.promptIds], { temperature: 0, maxTokens: 1 });
  assert.ok(again[0]!.numCachedTokens > 0, 'the plain request hits the prefix cache');
  const [o] = await llm.generate([c.promptIds], { temperature: 0, maxTokens: 1, promptLogprobs: TOP_N });
  assert.equal(o!.numCachedTokens, 0);
  checkPromptLogprobs(o!.promptLogprobs, c, g.vocabSize, 'after a cached run');
  await llm.close();
});

test('few spare logits rows: prompt chunks shrink to the rows a step has', async () => {
  const g = loadGolden('qwen2');
  const llm = await LLM.load(g.dir, { maxNumSeqs: 4 });
  // the runner made by LLM.load has DEFAULT rows; check the scheduler's row cap directly
  const scheduler = llm.engine.scheduler as unknown as { config: object };
  scheduler.config = { ...scheduler.config, maxNumPromptLogprobRows: 3 };
  const runner = llm.runner;
  const execute = runner.execute.bind(runner);
  let maxRows = 0;
  runner.execute = async (batch) => {
    const out = await execute(batch);
    for (const pl of out.promptLogprobs ?? []) maxRows = Math.max(maxRows, pl?.length ?? 0);
    return out;
  };
  const outs = await llm.generate(g.cases.map((c) => c.promptIds), { temperature: 0, maxTokens: 1, promptLogprobs: TOP_N });
  outs.forEach((o, i) => checkPromptLogprobs(o.promptLogprobs, g.cases[i]!, g.vocabSize, `3 rows case ${i}`));
  assert.equal(maxRows, 3);
  await llm.close();
});

test('a request preempted mid-prefill starts its prompt logprobs over', async () => {
  const g = loadGolden('qwen2');
  // 5 blocks of 4 tokens for 4 prompts of up to 30 tokens: admissions preempt each other
  const llm = await LLM.load(g.dir, { maxNumSeqs: 4, maxNumBatchedTokens: 8, blockSize: 4, numKvBlocks: 10 });
  const outs = await llm.generate(g.cases.map((c) => c.promptIds), { temperature: 0, maxTokens: 6, ignoreEos: true, promptLogprobs: TOP_N });
  outs.forEach((o, i) => checkPromptLogprobs(o.promptLogprobs, g.cases[i]!, g.vocabSize, `preempted case ${i}`));
  assert.ok(llm.stats().numPreemptions > 0, 'expected preemptions');
  await llm.close();
});

test('tensor parallel or no spare rows: prompt logprobs are refused with a code', async () => {
  const g = loadGolden('qwen2');
  const llm = await LLM.load(g.dir, { maxNumSeqs: 2 });
  (llm.runner as unknown as { maxNumPromptLogprobRows: number }).maxNumPromptLogprobRows = 0;
  await assert.rejects(llm.generate([g.cases[0]!.promptIds], { promptLogprobs: 1 }), (e: unknown) => isPeregrineError(e, 'PGN_ERR_UNSUPPORTED_FEATURE'));
  await llm.close();
});
