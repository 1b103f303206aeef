// Prompt logprobs over HTTP through the official `openai` client: a completion with echo and
// logprobs scores the echoed prompt tokens with transformers' prompt logits, streamed or not.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { logSumExp } from '../src/sampling/sampler.js';
import { loadGolden } from './helpers/golden.js';
import { withServer } from './server-harness.js';

const TOL = 1e-4;
/** the vLLM extensions are not in the client's types */
const ext = <T>(body: T & Record<string, unknown>) => body as T;

test('echo + logprobs: prompt tokens carry log_softmax of the golden prompt logits', async () => {
  const g = loadGolden('llama-gqa-llama3');
  // the longest prompt, so the step budget of 8 tokens splits it into chunks
  const c = g.cases.reduce((a, b) => (b.promptIds.length > a.promptIds.length ? b : a));
  const P = c.promptIds.length;
  const expected = (p: number) => {
    const row = c.logits.subarray((p - 1) * g.vocabSize, p * g.vocabSize);
    return row[c.promptIds[p]!]! - logSumExp(row);
  };
  await withServer({ engine: { maxNumSeqs: 4, maxNumBatchedTokens: 8 } }, async (s) => {
    const oa = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'sk-test', maxRetries: 0 });
    const body = ext({ model: '', prompt: c.promptIds, max_tokens: 2, temperature: 0, logprobs: 2, echo: true, return_tokens_as_token_ids: true });
    const whole = await oa.completions.create(body);
    const lp = whole.choices[0]!.logprobs!;
    assert.equal(lp.tokens!.length, P + 2);
    assert.equal(lp.token_logprobs![0], null);
    assert.equal(lp.top_logprobs![0], null);
    for (let p = 1; p < P; p++) {
      assert.equal(lp.tokens![p], `token_id:${c.promptIds[p]}`);
      assert.ok(Math.abs(lp.token_logprobs![p]! - expected(p)) < TOL, `prompt token ${p}: ${lp.token_logprobs![p]} vs ${expected(p)}`);
      const top = lp.top_logprobs![p]!;
      assert.equal(top[lp.tokens![p]!], lp.token_logprobs![p]);
      assert.ok(Object.keys(top).length >= 2 && Object.keys(top).length <= 3, 'top 2 and the prompt token');
    }

    const stream = await oa.completions.create({ ...body, stream: true });
    const streamed: Array<number | null> = [];
    for await (const chunk of stream) for (const ch of chunk.choices) streamed.push(...(ch.logprobs?.token_logprobs ?? []));
    assert.deepEqual(streamed, lp.token_logprobs);
  });
});
