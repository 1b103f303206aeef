/**
 * CPU backend: the ops the model zoo added (scale, softcap, clamp, qkRmsNorm, moeRoute,
 * moeExperts) against naive math written here, on fresh random inputs with odd sizes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend, cpuData } from '../src/backends/cpu/cpu-backend.js';
import type { Tensor } from '../src/backends/backend.js';
import { assertClose, assertInternal, rng } from './helpers/random.js';

const be = new CpuBackend();


function rand(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => (r() * 2 - 1) * scale);
}

function t32(shape: number[], seed: number, scale = 1): Tensor {
  return be.fromF32(shape, rand(shape.reduce((a, b) => a * b, 1), seed, scale));
}

const f32 = (t: Tensor) => cpuData(t) as Float32Array;
const i32 = (t: Tensor) => cpuData(t) as Int32Array;



test('scale, softcap and clamp: elementwise over the first numTokens rows, in place allowed', () => {
  const T = 5, H = 13;
  const x = t32([T + 2, H], 1, 6);
  const xs = Float32Array.from(f32(x));
  const out = be.empty([T + 2, H], 'f32');
  f32(out).fill(7);

  be.scale(out, x, 0.37, T);
  assertClose(f32(out).subarray(0, T * H), xs.subarray(0, T * H).map((v) => v * 0.37), 1e-6, 'scale');
  assert.ok(f32(out).subarray(T * H).every((v) => v === 7), 'rows past numTokens untouched');

  be.softcap(out, x, 2.5, T);
  assertClose(f32(out).subarray(0, T * H), xs.subarray(0, T * H).map((v) => 2.5 * Math.tanh(v / 2.5)), 1e-6, 'softcap');
  assert.ok(f32(out).subarray(0, T * H).every((v) => Math.abs(v) < 2.5), 'softcap stays inside (-cap, cap)');

  be.clamp(out, x, -1.5, 0.75, T);
  assertClose(f32(out).subarray(0, T * H), xs.subarray(0, T * H).map((v) => Math.min(0.75, Math.max(-1.5, v))), 0, 'clamp');

  be.scale(x, x, 2, T); // out aliases x
  assertClose(f32(x).subarray(0, T * H), xs.subarray(0, T * H).map((v) => v * 2), 1e-7, 'scale in place');

  assertInternal(() => be.softcap(out, x, 0, T), /cap must be positive/);
  assertInternal(() => be.clamp(out, x, 1, -1, T), /min 1 must not exceed max -1/);
  assertInternal(() => be.scale(out, x, 2, T + 3), /fewer than 8 rows/);
});

test('qkRmsNorm: each q and k head normalised with its weights (+ offset), v untouched', () => {
  const T = 3, nh = 4, nkv = 2, hd = 6, eps = 1e-6;
  const W = (nh + 2 * nkv) * hd;
  for (const weightOffset of [0, 1]) {
    const qkv = t32([T, W], 3, 2);
    const before = Float32Array.from(f32(qkv));
    const qw = t32([hd], 4), kw = t32([hd], 5);
    be.qkRmsNorm(qkv, qw, kw, eps, T, { numHeads: nh, numKvHeads: nkv, headDim: hd, weightOffset });
    const expected = Float32Array.from(before);
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < nh + nkv; h++) {
        const o = t * W + h * hd;
        const w = h < nh ? f32(qw) : f32(kw);
        let ms = 0;
        for (let i = 0; i < hd; i++) ms += before[o + i]! ** 2 / hd;
        for (let i = 0; i < hd; i++) expected[o + i] = (before[o + i]! / Math.sqrt(ms + eps)) * (w[i]! + weightOffset);
      }
    }
    assertClose(f32(qkv), expected, 1e-5, `qkRmsNorm offset ${weightOffset}`);
  }
  assertInternal(() => be.qkRmsNorm(t32([2, 10], 1), t32([6], 2), t32([6], 3), 1e-6, 2, { numHeads: 4, numKvHeads: 2, headDim: 6 }), /rows of 10 elements, expected 48/);
});

/** softmax over the row, top-k by probability (lower id first on ties), optional renormalisation */
function naiveRoute(logits: Float32Array, E: number, topK: number, renormalize: boolean, t: number): { ids: number[]; weights: number[] } {
  const row = Array.from(logits.subarray(t * E, (t + 1) * E));
  const max = Math.max(...row);
  const exps = row.map((v) => Math.exp(v - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  const probs = exps.map((v) => v / sum);
  const ids = probs.map((p, e) => ({ p, e })).sort((a, b) => b.p - a.p || a.e - b.e).slice(0, topK).map((x) => x.e);
  let weights = ids.map((e) => probs[e]!);
  if (renormalize) {
    const s = weights.reduce((a, b) => a + b, 0);
    weights = weights.map((w) => w / s);
  }
  return { ids, weights };
}

test('moeRoute: softmax, top-k best first, renormalised or not', () => {
  const T = 7, E = 5;
  const logits = t32([T, E], 11, 3);
  for (const [topK, renormalize] of [[2, true], [3, false], [1, true]] as const) {
    const ids = be.empty([T, topK], 'i32'), w = be.empty([T, topK], 'f32');
    be.moeRoute(ids, w, logits, T, topK, renormalize);
    for (let t = 0; t < T; t++) {
      const want = naiveRoute(f32(logits), E, topK, renormalize, t);
      assert.deepEqual([...i32(ids).subarray(t * topK, (t + 1) * topK)], want.ids, `token ${t} ids (topK ${topK})`);
      assertClose(f32(w).subarray(t * topK, (t + 1) * topK), want.weights, 1e-6, `token ${t} weights (topK ${topK})`);
    }
  }
  // ties go to the lower expert id
  const tie = be.fromF32([1, 4], Float32Array.from([0.5, 2, 2, 0.5]));
  const ids = be.empty([1, 2], 'i32'), w = be.empty([1, 2], 'f32');
  be.moeRoute(ids, w, tie, 1, 2, true);
  assert.deepEqual([...i32(ids)], [1, 2]);
  assertClose(f32(w), [0.5, 0.5], 1e-7, 'tied weights');
  assertInternal(() => be.moeRoute(ids, w, logits, T, 6, true), /topK 6 must be in 1\.\.5/);
});

test('moeExperts: weighted sum of the chosen SiLU-gated experts', () => {
  const T = 4, E = 3, H = 7, I = 5, topK = 2;
  const x = t32([T, H], 21);
  const gateUp = t32([E, 2 * I, H], 22, 0.5);
  const down = t32([E, H, I], 23, 0.5);
  const ids = be.fromI32([T, topK], Int32Array.from([0, 2, 1, 0, 2, 1, 1, 2]));
  const w = be.fromF32([T, topK], Float32Array.from([0.7, 0.3, 0.5, 0.5, 0.9, 0.1, 0.25, 0.75]));
  const out = be.empty([T, H], 'f32');
  be.moeExperts(out, x, gateUp, down, ids, w, T);

  const silu = (v: number) => v / (1 + Math.exp(-v));
  const expected = new Float32Array(T * H);
  const xd = f32(x), gd = f32(gateUp), dd = f32(down);
  for (let t = 0; t < T; t++) {
    for (let k = 0; k < topK; k++) {
      const e = i32(ids)[t * topK + k]!;
      const act = Array.from({ length: I }, (_, i) => {
        let g = 0, u = 0;
        for (let h = 0; h < H; h++) {
          g += gd[(e * 2 * I + i) * H + h]! * xd[t * H + h]!;
          u += gd[(e * 2 * I + I + i) * H + h]! * xd[t * H + h]!;
        }
        return silu(g) * u;
      });
      for (let h = 0; h < H; h++) {
        let s = 0;
        for (let i = 0; i < I; i++) s += dd[(e * H + h) * I + i]! * act[i]!;
        expected[t * H + h] += f32(w)[t * topK + k]! * s;
      }
    }
  }
  assertClose(f32(out), expected, 1e-5, 'moeExperts');

  assertInternal(() => be.moeExperts(out, x, t32([E * 2 * I, H], 1), down, ids, w, T), /must be 3-D/);
  assertInternal(() => be.moeExperts(out, x, gateUp, t32([E, H, I + 1], 2), ids, w, T), /expected \[3, 7, 5\]/);
  assertInternal(() => be.moeExperts(out, x, gateUp, down, be.fromI32([T, topK], Int32Array.from([0, 3, 0, 0, 0, 0, 0, 0])), w, T), /topkIds\[0\]\[1\] = 3/);
  assertInternal(() => be.moeExperts(x, x, gateUp, down, ids, w, T), /must not alias x/);
});
