import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isPeregrineError } from '../src/errors.js';
import { applyPenalties, expShiftedInPlace, maskBelowMinP } from '../src/sampling/logits-processors.js';
import { makeSamplingParams, type SamplingParamsInit } from '../src/sampling/params.js';
import { Rng, philox4x32 } from '../src/sampling/rng.js';
import { createSamplingState, sampleRow, type SequenceSamplingState } from '../src/sampling/sampler.js';
import { maskOutsideTopK, maskOutsideTopP, selectTopK } from '../src/sampling/select.js';

/** Deterministic test data, independent of the Rng under test (LCG, Numerical Recipes constants). */
function randomLogits(vocab: number, seed: number, scale = 4): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(vocab);
  for (let i = 0; i < vocab; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32 - 0.5) * 2 * scale;
  }
  return out;
}

function state(init: SamplingParamsInit, output: number[] = [], prompt: number[] = [], eos: number[] = []): SequenceSamplingState {
  return createSamplingState(makeSamplingParams(init), prompt, output, 0, eos);
}

function logSoftmax(x: ArrayLike<number>): number[] {
  let m = -Infinity;
  for (let i = 0; i < x.length; i++) m = Math.max(m, x[i]!);
  let s = 0;
  for (let i = 0; i < x.length; i++) s += Math.exp(x[i]! - m);
  return Array.from(x, (v) => v - m - Math.log(s));
}

function softmax(x: ArrayLike<number>): number[] {
  return logSoftmax(x).map(Math.exp);
}

/** How often each token is drawn in `draws` samples. */
function histogram(logits: Float32Array, st: SequenceSamplingState, draws: number): number[] {
  const counts = new Array<number>(logits.length).fill(0);
  const scratch = new Float32Array(logits.length);
  for (let i = 0; i < draws; i++) counts[sampleRow(logits, st, scratch).tokenId]!++;
  return counts;
}

function keptIds(x: Float32Array): number[] {
  const ids: number[] = [];
  x.forEach((v, i) => {
    if (v > 0) ids.push(i);
  });
  return ids;
}

test('Philox4x32-10 matches the Random123 known-answer vectors', () => {
  const out = new Uint32Array(4);
  philox4x32([0, 0, 0, 0], 0, 0, out);
  assert.deepEqual([...out], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
  philox4x32([0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], 0xffffffff, 0xffffffff, out);
  assert.deepEqual([...out], [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
  philox4x32([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], 0xa4093822, 0x299f31d0, out);
  assert.deepEqual([...out], [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]);
});

test('Rng: seed 0 streams the counter-0 block; floats lie in [0, 1) and reproduce per seed', () => {
  const r = new Rng(0);
  assert.equal(r.nextUint32(), 0x6627e8d5);
  const a = new Rng(42);
  const b = new Rng(42);
  const c = new Rng(43);
  let sum = 0;
  let differs = false;
  for (let i = 0; i < 1000; i++) {
    const x = a.nextFloat();
    assert.ok(x >= 0 && x < 1);
    assert.equal(x, b.nextFloat());
    if (x !== c.nextFloat()) differs = true;
    sum += x;
  }
  assert.ok(differs);
  assert.ok(Math.abs(sum / 1000 - 0.5) < 0.05, `mean ${sum / 1000}`);
  assert.notEqual(new Rng(-1).nextUint32(), new Rng(1).nextUint32());
});

test('greedy picks the argmax (ties: lowest id) and leaves the logits untouched', () => {
  const logits = new Float32Array([0.5, 3, -1, 3, 2]);
  const copy = logits.slice();
  const r = sampleRow(logits, state({ temperature: 0 }));
  assert.equal(r.tokenId, 1);
  assert.deepEqual(logits, copy);
  const big = randomLogits(128_000, 7);
  let best = 0;
  big.forEach((v, i) => {
    if (v > big[best]!) best = i;
  });
  assert.equal(sampleRow(big, state({ temperature: 0 })).tokenId, best);
});

test('same seed gives the same tokens; a different seed differs; seedOffset n = seed + n', () => {
  const logits = randomLogits(1000, 3, 1);
  const run = (seed: number, offset = 0): number[] => {
    const st = createSamplingState(makeSamplingParams({ seed, topP: 0.95, topK: 500 }), [], [], offset);
    return Array.from({ length: 50 }, () => sampleRow(logits, st).tokenId);
  };
  assert.deepEqual(run(1234), run(1234));
  assert.notDeepEqual(run(1234), run(1235));
  assert.deepEqual(run(1234, 1), run(1235));
});

test('20k draws at temperature 1 (and 0.5) follow the softmax', () => {
  const logits = new Float32Array([1.0, 0.2, -0.5, 2.0, 0.0, -3.0, 1.5, 0.7]);
  const draws = 20_000;
  for (const temperature of [1, 0.5]) {
    const counts = histogram(logits, state({ temperature, seed: 99 }), draws);
    const probs = softmax(Array.from(logits, (v) => v / temperature));
    probs.forEach((p, i) => {
      const sd = Math.sqrt((p * (1 - p)) / draws);
      const f = counts[i]! / draws;
      assert.ok(Math.abs(f - p) < 5 * sd + 1e-4, `T=${temperature} token ${i}: freq ${f} vs p ${p}`);
    });
  }
});

test('top-k = 1 equals greedy, whatever the seed', () => {
  const logits = randomLogits(32_000, 11);
  const greedy = sampleRow(logits, state({ temperature: 0 })).tokenId;
  for (let seed = 0; seed < 10; seed++) assert.equal(sampleRow(logits, state({ topK: 1, seed, temperature: 1.3 })).tokenId, greedy);
});

test('top-k keeps exactly k (ties to the lowest ids); matches a sort on 128k logits', () => {
  const x = new Float32Array([1, 5, 3, 5, 3, 0]);
  maskOutsideTopK(x, 3);
  assert.deepEqual(Array.from(x), [-Infinity, 5, 3, 5, -Infinity, -Infinity]);

  const big = randomLogits(128_000, 5);
  const order = Array.from(big.keys()).sort((a, b) => big[b]! - big[a]! || a - b);
  assert.deepEqual(Array.from(selectTopK(big, 50)), order.slice(0, 50));
  const masked = big.slice();
  maskOutsideTopK(masked, 1000);
  const kept = new Set(order.slice(0, 1000));
  masked.forEach((v, i) => assert.equal(v !== -Infinity, kept.has(i)));
});

test('top-p keeps the smallest set reaching topP (hand-built), at least one, ties to the lowest ids', () => {
  // p = 0.1, 0.4, 0.2, 0.3 at ids 0..3
  const logits = [0.1, 0.4, 0.2, 0.3].map(Math.log);
  const keptFor = (topP: number): number[] => {
    const w = new Float32Array(logits);
    expShiftedInPlace(w);
    maskOutsideTopP(w, topP);
    return keptIds(w);
  };
  assert.deepEqual(keptFor(0.3), [1]);
  assert.deepEqual(keptFor(0.65), [1, 3]);
  assert.deepEqual(keptFor(0.75), [1, 2, 3]);
  assert.deepEqual(keptFor(0.95), [0, 1, 2, 3]);
  assert.deepEqual(keptFor(1e-6), [1]);
  const flat = new Float32Array(4).fill(1);
  maskOutsideTopP(flat, 0.45);
  assert.deepEqual(keptIds(flat), [0, 1]);

  // through the sampler: draws land only in {1, 3}, in proportion 0.4 : 0.3
  const counts = histogram(new Float32Array(logits), state({ topP: 0.65, seed: 1 }), 5000);
  assert.equal(counts[0]! + counts[2]!, 0);
  assert.ok(Math.abs(counts[1]! / 5000 - 4 / 7) < 0.03, `${counts}`);
});

test('top-p matches a sorted cumulative sum on 128k logits', () => {
  const big = randomLogits(128_000, 9, 6);
  const w = big.slice();
  expShiftedInPlace(w);
  const ref = Array.from(w);
  const total = ref.reduce((a, b) => a + b, 0);
  const order = Array.from(big.keys()).sort((a, b) => ref[b]! - ref[a]! || a - b);
  let cum = 0;
  let n = 0;
  while (cum < 0.9 * total) cum += ref[order[n++]!]!;
  maskOutsideTopP(w, 0.9);
  const kept = keptIds(w);
  assert.equal(kept.length, n);
  assert.deepEqual(kept, order.slice(0, n).sort((a, b) => a - b));
});

test('min-p drops tokens with p < minP * pmax (hand-built)', () => {
  // p = 0.15, 0.5, 0.1, 0.25: threshold 0.35 * 0.5 = 0.175 keeps ids 1 and 3
  const logits = new Float32Array([0.15, 0.5, 0.1, 0.25].map(Math.log));
  const w = logits.slice();
  expShiftedInPlace(w);
  maskBelowMinP(w, 0.35);
  assert.deepEqual(keptIds(w), [1, 3]);
  const counts = histogram(logits, state({ minP: 0.35, seed: 2 }), 3000);
  assert.equal(counts[0]! + counts[2]!, 0);
  assert.ok(counts[1]! > 0 && counts[3]! > 0);
});

test('penalties on hand-computed numbers', () => {
  const logits = [2.0, -1.0, 0.5, 3.0, -2.0];
  const prompt = [0, 1];
  const output = [1, 3, 3];
  const apply = (init: SamplingParamsInit): number[] => {
    const x = new Float32Array(logits);
    applyPenalties(x, makeSamplingParams(init), { promptTokenIds: prompt, outputTokenIds: output });
    return Array.from(x);
  };
  // repetition over prompt + output {0, 1, 3}: positive / 2, negative * 2
  assert.deepEqual(apply({ repetitionPenalty: 2 }), [1.0, -2.0, 0.5, 1.5, -2.0]);
  // presence over output only {1, 3}
  assert.deepEqual(apply({ presencePenalty: 0.5 }), [2.0, -1.5, 0.5, 2.5, -2.0]);
  // frequency: counts 1 -> 1, 3 -> 2
  assert.deepEqual(apply({ frequencyPenalty: 0.25 }), [2.0, -1.25, 0.5, 2.5, -2.0]);
  // all: repetition first, then presence + frequency
  assert.deepEqual(apply({ repetitionPenalty: 2, presencePenalty: 0.5, frequencyPenalty: 0.25 }), [1.0, -2.75, 0.5, 0.5, -2.0]);
  // a negative presence penalty encourages repeats
  assert.deepEqual(apply({ presencePenalty: -1 }), [2.0, 0.0, 0.5, 4.0, -2.0]);
});

test('penalties follow a growing output between steps, and change the greedy choice', () => {
  const logits = new Float32Array([1.0, 0.9, 0.0]);
  const output: number[] = [];
  const st = state({ temperature: 0, frequencyPenalty: 0.2 }, output);
  const picks: number[] = [];
  for (let i = 0; i < 4; i++) {
    const t = sampleRow(logits, st).tokenId;
    picks.push(t);
    output.push(t);
  }
  // 1.0 vs 0.9: after one 0 it is 0.8 vs 0.9; after one 1 it is 0.8 vs 0.7; ...
  assert.deepEqual(picks, [0, 1, 0, 1]);
});

test('min_tokens masks eos and stop token ids until enough outputs exist', () => {
  const logits = new Float32Array([0, 1, 5, 4, 3]); // eos = 2, stop id = 3
  const output: number[] = [];
  const st = state({ temperature: 0, minTokens: 2, stopTokenIds: [3] }, output, [], [2]);
  assert.equal(sampleRow(logits, st).tokenId, 4);
  output.push(4);
  assert.equal(sampleRow(logits, st).tokenId, 4);
  output.push(4);
  assert.equal(sampleRow(logits, st).tokenId, 2);
  const sampled = histogram(logits, state({ minTokens: 1, stopTokenIds: [3], seed: 3 }, [], [], [2]), 500);
  assert.equal(sampled[2]! + sampled[3]!, 0);
});

test('logprobs are the raw log_softmax (before penalties and temperature), top-n best first', () => {
  const logits = randomLogits(5000, 21, 3);
  const ref = logSoftmax(logits);
  const order = Array.from(logits.keys()).sort((a, b) => ref[b]! - ref[a]! || a - b);
  const st = state({ temperature: 0.6, repetitionPenalty: 1.3, logprobs: 5, seed: 4 }, [order[0]!], [order[1]!]);
  const r = sampleRow(logits, st);
  assert.ok(Math.abs(r.logprob - ref[r.tokenId]!) < 1e-9);
  assert.deepEqual(r.topLogprobs!.map((t) => t.tokenId), order.slice(0, 5));
  r.topLogprobs!.forEach((t) => assert.ok(Math.abs(t.logprob - ref[t.tokenId]!) < 1e-9));

  const only = sampleRow(logits, state({ temperature: 0, logprobs: 0 }));
  assert.equal(only.tokenId, order[0]);
  assert.ok(Math.abs(only.logprob - ref[order[0]!]!) < 1e-9);
  assert.deepEqual(only.topLogprobs, []);
  const none = sampleRow(logits, state({ temperature: 0 }));
  assert.equal(none.topLogprobs, null);
  assert.ok(Number.isNaN(none.logprob));
});

test('a scratch buffer gives the same draws; a 128k row with every filter samples from the kept set', () => {
  const logits = randomLogits(128_000, 13, 8);
  const a = state({ seed: 8, topK: 100, topP: 0.8, minP: 0.05, repetitionPenalty: 1.1 }, [1, 2], [3]);
  const b = state({ seed: 8, topK: 100, topP: 0.8, minP: 0.05, repetitionPenalty: 1.1 }, [1, 2], [3]);
  const scratch = new Float32Array(128_000);
  const top100 = new Set(selectTopK(logits, 100));
  for (let i = 0; i < 20; i++) {
    const t = sampleRow(logits, a, scratch).tokenId;
    assert.equal(t, sampleRow(logits, b).tokenId);
    assert.ok(top100.has(t));
  }
});

test('a row with no samplable token is a typed error', () => {
  const logits = new Float32Array(4).fill(-Infinity);
  assert.throws(
    () => sampleRow(logits, state({ seed: 1 })),
    (e: unknown) => isPeregrineError(e, 'PGN_ERR_INTERNAL') && /-inf or NaN/.test(e.message),
  );
  assert.throws(() => sampleRow(logits, state({ temperature: 0 })), (e: unknown) => isPeregrineError(e, 'PGN_ERR_INTERNAL'));
});
