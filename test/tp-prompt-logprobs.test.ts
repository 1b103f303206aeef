// Prompt logprobs under tensor parallelism (CPU ranks in worker threads): tp 2 returns the
// prompt logprobs of tp 1, whole prompts and prompts split over prefill chunks, with the
// runner's default logits rows (the communicator's slots must hold them).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LLM } from '../src/api/llm.js';
import type { OutputLogprob } from '../src/api/outputs.js';
import { TpGroup } from '../src/parallel/tp-group.js';
import { DEFAULT_PROMPT_LOGPROB_ROWS } from '../src/runner/model-runner.js';
import { loadGolden } from './helpers/golden.js';

const TOL = 1e-4;
const TOP_N = 3;

function assertClose(got: ReadonlyArray<OutputLogprob | null> | null, want: ReadonlyArray<OutputLogprob | null> | null, label: string): void {
  assert.ok(got && want, `${label}: no prompt logprobs`);
  assert.equal(got.length, want.length, label);
  assert.equal(got[0], null, `${label}: position 0 has none`);
  for (let p = 1; p < want.length; p++) {
    const a: OutputLogprob = got[p]!, b: OutputLogprob = want[p]!;
    assert.equal(a.tokenId, b.tokenId, `${label} position ${p}`);
    assert.ok(Math.abs(a.logprob - b.logprob) < TOL, `${label} position ${p}: ${a.logprob} vs ${b.logprob}`);
    assert.equal(a.topLogprobs.length, TOP_N, `${label} position ${p}`);
    a.topLogprobs.forEach((t, k) => {
      assert.equal(t.tokenId, b.topLogprobs[k]!.tokenId, `${label} position ${p} top ${k}`);
      assert.ok(Math.abs(t.logprob - b.topLogprobs[k]!.logprob) < TOL, `${label} position ${p} top ${k}`);
    });
  }
}

test('tp 2 gives the prompt logprobs of tp 1, whole and in chunks', async () => {
  const g = loadGolden('llama-gqa-llama3'); // 4 heads, 2 KV heads: split 2 + 2
  const prompts = g.cases.map((c) => c.promptIds);
  const longest = Math.max(...prompts.map((p) => p.length));
  const params = { temperature: 0, maxTokens: 2, ignoreEos: true, promptLogprobs: TOP_N };
  for (const maxNumBatchedTokens of [256, 8]) {
    assert.ok(maxNumBatchedTokens === 256 || longest > maxNumBatchedTokens, 'the small budget splits a prompt');
    const opts = { maxModelLen: 256, maxNumSeqs: 4, maxNumBatchedTokens };
    const one = await LLM.load(g.dir, opts);
    const want = await one.generate(prompts, params);
    await one.close();
    const two = await LLM.load(g.dir, { ...opts, tp: 2 });
    try {
      assert.ok(two.executor instanceof TpGroup);
      assert.equal(two.executor.maxNumPromptLogprobRows, DEFAULT_PROMPT_LOGPROB_ROWS);
      const got = await two.generate(prompts, params);
      got.forEach((o, i) => {
        assertClose(o.promptLogprobs, want[i]!.promptLogprobs, `budget ${maxNumBatchedTokens} case ${i}`);
        assert.equal(o.promptLogprobs!.length, prompts[i]!.length);
        assert.deepEqual(o.outputs[0]!.tokenIds, want[i]!.outputs[0]!.tokenIds, `budget ${maxNumBatchedTokens} case ${i}: outputs`);
      });
    } finally {
      await two.close();
    }
  }
});
