// vLLM's `prompt_logprobs` request field on /v1/completions, through plain fetch (the openai
// client drops unknown fields): each choice carries [null, {token_id: {logprob, rank,
// decoded_token}}, ...] with transformers' prompt logprobs; bad values and streams are 400s.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { logSumExp } from '../src/sampling/sampler.js';
import { loadGolden } from './helpers/golden.js';
import { post, withServer, type JsonResponse } from './server-harness.js';

const TOL = 1e-4;
const TOP_N = 2;

function assertError(r: JsonResponse, code: string, message: RegExp): void {
  assert.equal(r.status, 400, JSON.stringify(r.body));
  assert.equal(r.body.error.code, code);
  assert.equal(r.body.error.param, 'prompt_logprobs');
  assert.match(r.body.error.message, message);
}

test('prompt_logprobs: per position the top n with ranks 1..n and the prompt token, as transformers', async () => {
  const g = loadGolden('llama-gqa-llama3');
  const c = g.cases.reduce((a, b) => (b.promptIds.length > a.promptIds.length ? b : a));
  const P = c.promptIds.length;
  const V = g.vocabSize;
  await withServer({ engine: { maxNumSeqs: 4, maxNumBatchedTokens: 8 } }, async (s) => {
    const url = `${s.url}/v1/completions`;
    const base = { model: s.app.context.servedModelName, prompt: c.promptIds, max_tokens: 2, temperature: 0 };
    const r = await post(url, { ...base, n: 2, prompt_logprobs: TOP_N, return_tokens_as_token_ids: true });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.choices.length, 2);
    let numOutsideTop = 0;
    for (const choice of r.body.choices) {
      assert.equal(choice.logprobs, null, 'no output logprobs were asked');
      const pl = choice.prompt_logprobs;
      assert.equal(pl.length, P);
      assert.equal(pl[0], null);
      for (let p = 1; p < P; p++) {
        const row = c.logits.subarray((p - 1) * V, p * V);
        const lse = logSumExp(row);
        const tok = c.promptIds[p]!;
        const best = [...row.keys()].sort((a, b) => row[b]! - row[a]!).slice(0, TOP_N);
        const entries = pl[p] as Record<string, { logprob: number; rank?: number; decoded_token: string }>;
        assert.deepEqual(Object.keys(entries).map(Number).sort((a, b) => a - b), [...new Set([...best, tok])].sort((a, b) => a - b), `position ${p}: keys`);
        best.forEach((id, k) => {
          const e = entries[id]!;
          assert.equal(e.rank, k + 1, `position ${p} top ${k}`);
          assert.equal(e.decoded_token, `token_id:${id}`);
          assert.ok(Math.abs(e.logprob - (row[id]! - lse)) < TOL, `position ${p} top ${k}: ${e.logprob}`);
        });
        const e = entries[tok]!;
        assert.ok(Math.abs(e.logprob - (row[tok]! - lse)) < TOL, `position ${p}: ${e.logprob} vs ${row[tok]! - lse}`);
        const rank = 1 + row.filter((x) => x > row[tok]!).length;
        if (rank <= TOP_N) assert.equal(e.rank, rank, `position ${p}: rank`);
        else {
          assert.ok(!('rank' in e), `position ${p}: a prompt token outside the top n has no rank`);
          numOutsideTop++;
        }
      }
    }
    assert.ok(numOutsideTop > 0, 'the fixture has prompt tokens outside the top n');

    // decoded_token is the token's text with the tokenizer; 0 alternatives leaves the prompt token alone
    const zero = await post(url, { ...base, prompt_logprobs: 0 });
    assert.equal(zero.status, 200, JSON.stringify(zero.body));
    const tok = s.app.context.tokenizer!;
    zero.body.choices[0].prompt_logprobs.slice(1).forEach((entries: Record<string, { decoded_token: string }>, i: number) => {
      const id = c.promptIds[i + 1]!;
      assert.deepEqual(Object.keys(entries), [String(id)]);
      assert.equal(entries[id]!.decoded_token, tok.decode([id], { skipSpecialTokens: false }));
    });

    // not asked: no field (echo + logprobs still scores the echoed prompt only)
    const plain = await post(url, { ...base, logprobs: 1, echo: true });
    assert.equal(plain.status, 200);
    assert.ok(!('prompt_logprobs' in plain.body.choices[0]));
    assert.equal(plain.body.choices[0].logprobs.token_logprobs.length, P + 2);
  });
});

test('prompt_logprobs out of 0..20, not an integer, or with stream is a 400 naming the field', async () => {
  await withServer({}, async (s) => {
    const url = `${s.url}/v1/completions`;
    const base = { model: s.app.context.servedModelName, prompt: [1, 2, 3], max_tokens: 1 };
    assertError(await post(url, { ...base, prompt_logprobs: 21 }), 'invalid_value', /'prompt_logprobs' must be at most 20, got 21/);
    assertError(await post(url, { ...base, prompt_logprobs: -1 }), 'invalid_value', /'prompt_logprobs' must be at least 0, got -1/);
    assertError(await post(url, { ...base, prompt_logprobs: 1.5 }), 'invalid_value', /'prompt_logprobs' must be an integer/);
    assertError(await post(url, { ...base, prompt_logprobs: '2' }), 'invalid_value', /'prompt_logprobs' must be a number, got string/);
    assertError(await post(url, { ...base, prompt_logprobs: 1, stream: true }), 'unsupported_feature', /not available when 'stream' is true/);
  });
});
