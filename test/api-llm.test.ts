// The library API over the batching engine on the CPU backend: results equal the plain
// simple-generate loop (and transformers' greedy ids), streaming, chat, n, seeds, aborts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LLM } from '../src/api/llm.js';
import { isPeregrineError } from '../src/errors.js';
import { fixtureDir, loadGolden } from './helpers/golden.js';

test('generate: many prompts at once give transformers\' greedy ids', async () => {
  const g = loadGolden('qwen2');
  const llm = await LLM.load(g.dir, { maxNumSeqs: 8, maxNumBatchedTokens: 32 });
  const outs = await llm.generate(g.cases.map((c) => c.promptIds), { temperature: 0, maxTokens: 24, ignoreEos: true });
  outs.forEach((o, i) => {
    assert.deepEqual(o.outputs[0]!.tokenIds, g.cases[i]!.greedyIds, `case ${i}`);
    assert.equal(o.outputs[0]!.finishReason, 'length');
    assert.deepEqual(o.promptTokenIds, g.cases[i]!.promptIds);
  });
  assert.equal(llm.stats().numKvBlocksUsed, 0);
  await llm.close();
});

test('32 concurrent seeded requests give exactly what each gives alone, also under preemption', async () => {
  const dir = fixtureDir('llama-linear');
  const prompts = Array.from({ length: 32 }, (_, i) => Array.from({ length: 3 + ((i * 7) % 29) }, (_, j) => 3 + ((i * 31 + j * 17) % 300)));
  const params = { temperature: 0.8, topP: 0.95, seed: 11, maxTokens: 12, ignoreEos: true };
  const alone = await LLM.load(dir, { maxNumSeqs: 1 });
  const expected: number[][] = [];
  for (const p of prompts) expected.push([...(await alone.generate([p], params))[0]!.outputs[0]!.tokenIds]);
  await alone.close();
  // a pool of 12 blocks of 16 tokens cannot hold 32 sequences: the engine must preempt and recompute
  const tight = await LLM.load(dir, { maxNumSeqs: 32, maxNumBatchedTokens: 64, numKvBlocks: 12 });
  const outs = await tight.generate(prompts, params);
  outs.forEach((o, i) => assert.deepEqual(o.outputs[0]!.tokenIds, expected[i], `request ${i}`));
  assert.ok(tight.stats().numPreemptions > 0, 'expected preemptions');
  assert.equal(tight.stats().numKvBlocksUsed, 0);
  await tight.close();
});

test('stream yields deltas that add up to generate\'s text; breaking out aborts', async () => {
  const llm = await LLM.load(fixtureDir('llama-gqa-llama3'));
  const params = { temperature: 0, maxTokens: 20, ignoreEos: true };
  const [full] = await llm.generate('It was the best of times', params);
  let text = '';
  const ids: number[] = [];
  let last = null;
  for await (const d of llm.stream('It was the best of times', params)) {
    text += d.text;
    ids.push(...d.tokenIds);
    last = d;
  }
  assert.equal(text, full!.outputs[0]!.text);
  assert.deepEqual(ids, full!.outputs[0]!.tokenIds);
  assert.equal(last!.finished, true);
  let n = 0;
  for await (const d of llm.stream('It was the worst of times', { ...params, maxTokens: 200 })) {
    if (d.tokenIds.length && ++n === 3) break;
  }
  // the abort is applied at the next engine step; let it run
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(llm.stats().numRunning + llm.stats().numWaiting, 0);
  assert.equal(llm.stats().numKvBlocksUsed, 0);
  await llm.close();
});

test('chat applies the template; n samples with a seed are reproducible; logprobs', async () => {
  const llm = await LLM.load(fixtureDir('llama-gqa-llama3'));
  const reply = await llm.chat([{ role: 'user', content: 'Four score and seven years ago' }], { temperature: 0, maxTokens: 8 });
  assert.ok(reply.promptTokenIds.length > 5);
  const a = await llm.generate('Four score', { n: 3, seed: 5, temperature: 1, maxTokens: 8, logprobs: 2, ignoreEos: true });
  const b = await llm.generate('Four score', { n: 3, seed: 5, temperature: 1, maxTokens: 8, logprobs: 2, ignoreEos: true });
  assert.equal(a[0]!.outputs.length, 3);
  assert.deepEqual(a[0]!.outputs.map((o) => o.tokenIds), b[0]!.outputs.map((o) => o.tokenIds));
  assert.notDeepEqual(a[0]!.outputs[0]!.tokenIds, a[0]!.outputs[1]!.tokenIds);
  const lp = a[0]!.outputs[0]!.logprobs!;
  assert.equal(lp.length, 8);
  assert.equal(lp[0]!.topLogprobs.length, 2);
  assert.ok(lp.every((l) => l.logprob <= 0 && typeof l.token === 'string'));
  await llm.close();
});

test('bad requests fail alone and leave the engine usable', async () => {
  const llm = await LLM.load(fixtureDir('mistral'));
  await assert.rejects(llm.generate([[1, 2, 3]], { topP: 0 }), (e) => isPeregrineError(e, 'PGN_ERR_INVALID_ARGUMENT'));
  await assert.rejects(llm.generate([Array(3000).fill(5)], {}), (e) => isPeregrineError(e, 'PGN_ERR_PROMPT_TOO_LONG'));
  await assert.rejects(llm.generate('text without a tokenizer'), (e) => isPeregrineError(e, 'PGN_ERR_TOKENIZER_MISSING'));
  await assert.rejects(llm.generate([[]]), (e) => isPeregrineError(e, 'PGN_ERR_INVALID_ARGUMENT'));
  const [ok] = await llm.generate([[3, 4, 5]], { maxTokens: 4, temperature: 0, ignoreEos: true });
  assert.equal(ok!.outputs[0]!.tokenIds.length, 4);
  await llm.close();
});

test('the runner accounts each step\'s time between host gap and device work', async () => {
  const llm = await LLM.load(fixtureDir('mistral'));
  llm.runner.stepTiming(true);
  await llm.generate([[3, 4, 5], [6, 7, 8, 9]], { maxTokens: 6, temperature: 0, ignoreEos: true });
  const t = llm.runner.stepTiming();
  assert.ok(t.numSteps >= 6, `${t.numSteps} steps`);
  assert.ok(t.hostGapFraction >= 0 && t.hostGapFraction < 1, `host gap fraction ${t.hostGapFraction}`);
  assert.ok(t.meanStepMs > 0 && t.meanHostGapMs <= t.meanStepMs);
  // the prompts' step carries prompt tokens, the five after it are pure decodes
  assert.equal(t.prefill.numSteps + t.decode.numSteps, t.numSteps);
  assert.ok(t.prefill.numSteps >= 1 && t.decode.numSteps >= 5, JSON.stringify(t));
  assert.ok(t.decode.meanBusyMs > 0 && t.prefill.meanBusyMs > 0);
  assert.equal(llm.runner.stepTiming(true).numSteps, t.numSteps);
  assert.equal(llm.runner.stepTiming().numSteps, 0, 'reset');
  await llm.close();
});
