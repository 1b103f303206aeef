import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isPeregrineError } from '../src/errors.js';
import { DEFAULT_MAX_TOKENS, isGreedy, makeSamplingParams, type SamplingParamsInit } from '../src/sampling/params.js';

function expectInvalid(init: SamplingParamsInit, param: string): void {
  assert.throws(
    () => makeSamplingParams(init),
    (e: unknown) => {
      assert.ok(isPeregrineError(e, 'PGN_ERR_INVALID_ARGUMENT'), `expected PGN_ERR_INVALID_ARGUMENT, got ${String(e)}`);
      assert.equal(e.details.param, param);
      assert.match(e.message, new RegExp(`^${param} `));
      return true;
    },
    `${JSON.stringify(init)} should be rejected`,
  );
}

test('defaults are vLLM defaults', () => {
  const p = makeSamplingParams();
  assert.deepEqual(p, {
    n: 1,
    maxTokens: DEFAULT_MAX_TOKENS,
    minTokens: 0,
    temperature: 1,
    topP: 1,
    topK: 0,
    minP: 0,
    repetitionPenalty: 1,
    presencePenalty: 0,
    frequencyPenalty: 0,
    seed: null,
    stop: [],
    stopTokenIds: [],
    ignoreEos: false,
    includeStopStrInOutput: false,
    logprobs: null,
    promptLogprobs: null,
    skipSpecialTokens: true,
  });
  assert.equal(DEFAULT_MAX_TOKENS, 16);
  assert.equal(isGreedy(p), false);
});

test('given fields override defaults; undefined fields keep them; arrays are copied', () => {
  const stop = ['\n\n'];
  const p = makeSamplingParams({ temperature: 0.7, topP: 0.9, topK: 40, maxTokens: undefined, stop, seed: -3, logprobs: 5 });
  assert.equal(p.temperature, 0.7);
  assert.equal(p.topP, 0.9);
  assert.equal(p.topK, 40);
  assert.equal(p.maxTokens, DEFAULT_MAX_TOKENS);
  assert.equal(p.seed, -3);
  assert.equal(p.logprobs, 5);
  stop.push('x');
  assert.deepEqual(p.stop, ['\n\n']);
});

test('top_k -1 means off and is normalised to 0', () => {
  assert.equal(makeSamplingParams({ topK: -1 }).topK, 0);
});

test('greedy requests drop top-k/top-p/min-p (they cannot change an argmax)', () => {
  const p = makeSamplingParams({ temperature: 0, topP: 0.5, topK: 3, minP: 0.2 });
  assert.equal(isGreedy(p), true);
  assert.equal(p.topP, 1);
  assert.equal(p.topK, 0);
  assert.equal(p.minP, 0);
});

test('out-of-range values are rejected with the OpenAI parameter name', () => {
  expectInvalid({ n: 0 }, 'n');
  expectInvalid({ n: 1.5 }, 'n');
  expectInvalid({ maxTokens: 0 }, 'max_tokens');
  expectInvalid({ minTokens: -1 }, 'min_tokens');
  expectInvalid({ minTokens: 10, maxTokens: 5 }, 'min_tokens');
  expectInvalid({ temperature: -0.1 }, 'temperature');
  expectInvalid({ temperature: Number.NaN }, 'temperature');
  expectInvalid({ topP: 0 }, 'top_p');
  expectInvalid({ topP: 1.5 }, 'top_p');
  expectInvalid({ topK: -2 }, 'top_k');
  expectInvalid({ topK: 2.5 }, 'top_k');
  expectInvalid({ minP: -0.1 }, 'min_p');
  expectInvalid({ minP: 1.1 }, 'min_p');
  expectInvalid({ repetitionPenalty: 0 }, 'repetition_penalty');
  expectInvalid({ presencePenalty: 2.5 }, 'presence_penalty');
  expectInvalid({ frequencyPenalty: -2.5 }, 'frequency_penalty');
  expectInvalid({ seed: 1.5 }, 'seed');
  expectInvalid({ stop: [''] }, 'stop');
  expectInvalid({ stopTokenIds: [-1] }, 'stop_token_ids');
  expectInvalid({ logprobs: -1 }, 'logprobs');
  expectInvalid({ promptLogprobs: 0.5 }, 'prompt_logprobs');
});

test('wrongly typed values (e.g. from JSON) are rejected, and details carry the value', () => {
  expectInvalid({ temperature: '0.5' as unknown as number }, 'temperature');
  expectInvalid({ stop: 'END' as unknown as string[] }, 'stop');
  expectInvalid({ ignoreEos: 1 as unknown as boolean }, 'ignore_eos');
  try {
    makeSamplingParams({ topP: 2 });
    assert.fail('should throw');
  } catch (e) {
    assert.ok(isPeregrineError(e, 'PGN_ERR_INVALID_ARGUMENT'));
    assert.equal(e.details.value, 2);
    assert.match(e.message, /top_p must be in \(0, 1\], got 2/);
  }
});

test('boundary values are accepted', () => {
  makeSamplingParams({ topP: 1, minP: 1, presencePenalty: -2, frequencyPenalty: 2, minTokens: 16, maxTokens: 16, logprobs: 0, promptLogprobs: 0, seed: 0 });
});
