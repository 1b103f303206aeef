// INT8 (symmetric per channel) and INT4 (group, symmetric / asymmetric) quantization against
// hand-computed codes, the int4 nibble packing order, and the error bound |w - w'| <= scale / 2.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { quantizeInt8 } from '../src/weights/quant/int8.js';
import { packInt4, quantizeInt4, unpackInt4 } from '../src/weights/quant/int4.js';
import { dequantize } from '../src/weights/quant/dequantize.js';
import { numGroups } from '../src/weights/quant/types.js';
import { f16ToF32, f32ToF16 } from '../src/weights/dtype.js';

function randomWeights(n: number, seed: number, scale = 1): Float32Array {
  const w = new Float32Array(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    w[i] = ((s / 2 ** 32) * 2 - 1) * scale * (1 + (i % 7));
  }
  return w;
}

test('int8 per channel: scale amax / 127.5, half-even rounding, clamp to [-128, 127]', () => {
  // amax 7.96875 = 127.5 * 0.0625 -> s = 0.0625 (exact); w / s = 127.5, -127.5, 1.5, 2.5, -0.5, 0, 64, -1
  const row = [7.96875, -7.96875, 0.09375, 0.15625, -0.03125, 0, 4, -0.0625];
  const h = quantizeInt8(Float32Array.from([...row, ...row.map((v) => v * 2)]), 2, 8);
  assert.deepEqual([...h.scales], [0.0625, 0.125]);
  const codes = new Int8Array(h.qweight.buffer);
  assert.deepEqual([...codes.subarray(0, 8)], [127, -128, 2, 2, 0, 0, 64, -1]);
  assert.deepEqual([...codes.subarray(8)], [127, -128, 2, 2, 0, 0, 64, -1]);
  // little-endian words: element k in byte k % 4 of word k / 4
  assert.equal(h.qweight[0]! >>> 0, (2 << 24 | 2 << 16 | 0x80 << 8 | 127) >>> 0);
  assert.deepEqual([...dequantize(h).subarray(0, 8)], [7.9375, -8, 0.125, 0.125, 0, 0, 4, -0.0625]);
});

test('int8 error bound on random rows: |w - w\'| <= s / 2, per channel and per group', () => {
  const N = 12, K = 96;
  const w = randomWeights(N * K, 5);
  for (const G of [K, 32]) {
    const h = quantizeInt8(w, N, K, G);
    assert.equal(h.scales.length, N * numGroups(K, G));
    const deq = dequantize(h);
    for (let i = 0; i < w.length; i++) {
      const s = h.scales[Math.floor(i / K) * numGroups(K, G) + Math.floor((i % K) / G)]!;
      assert.ok(Math.abs(deq[i]! - w[i]!) <= s / 2 + Math.abs(w[i]!) * 2 ** -23, `G ${G} element ${i}`); // + the f32 rounding of w'
    }
  }
});

test('int4 packing: q[n, 8j + i] sits in bits 4i..4i+3 of word [n, j]', () => {
  const vals = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
  const words = packInt4(vals, 2, 8);
  assert.equal(words[0]! >>> 0, 0x76543210);
  assert.equal(words[1]! >>> 0, 0xfedcba98);
  assert.deepEqual([...unpackInt4(words, 2, 8)], vals);
  const one = packInt4([0, 0, 0, 0, 0, 0, 0, 0, /* row 1, k = 3 */ 0, 0, 0, 5, 0, 0, 0, 0], 2, 8);
  assert.deepEqual([...one], [0, 5 << 12]);
});

test('int4 symmetric: scale amax / 7.5, zero 8, codes by hand', () => {
  // group of 8, amax 3.75 -> s = 0.5; w / s = 7.5 -> 8 -> 16 clamps to 15; -7.5 -> -8 -> 0; 0.5 -> 0 (even) -> 8;
  // 1.5 -> 2 -> 10; -2.5 -> -2 -> 6; 3 -> 11; -1 -> 7; 0 -> 8
  const w = Float32Array.from([3.75, -3.75, 0.25, 0.75, -1.25, 1.5, -0.5, 0]);
  const h = quantizeInt4(w, 1, 8, { groupSize: 8, symmetric: true });
  assert.deepEqual([...h.scales], [0.5]);
  assert.equal(h.zeros, null);
  assert.deepEqual([...unpackInt4(h.qweight, 1, 8)], [15, 0, 8, 10, 6, 11, 7, 8]);
  assert.deepEqual([...dequantize(h)], [3.5, -4, 0, 1, -1, 1.5, -0.5, 0]);
});

test('int4 asymmetric: range [min, max] over 0..15 with a zero point, and GPTQ v1 minZero', () => {
  // -1 .. 2.75: range 3.75, s = 0.25, zero = 4
  const w = Float32Array.from([-1, 2.75, 0, 0.1, 1, -0.5, 2, 0.3]);
  const h = quantizeInt4(w, 1, 8, { groupSize: 8, symmetric: false });
  assert.deepEqual([...h.scales], [0.25]);
  assert.deepEqual([...h.zeros!], [4]);
  assert.deepEqual([...unpackInt4(h.qweight, 1, 8)], [0, 15, 4, 4, 8, 2, 12, 5]);
  // all >= 0: zero would be 0; GPTQ v1 cannot store it, so zero 1 and s = max / 14
  const pos = Float32Array.from([0, 0.25, 0.5, 1, 2, 3, 3.5, 3.75]);
  const free = quantizeInt4(pos, 1, 8, { groupSize: 8, symmetric: false });
  assert.deepEqual([...free.zeros!], [0]);
  assert.deepEqual([...unpackInt4(free.qweight, 1, 8)], [0, 1, 2, 4, 8, 12, 14, 15]);
  const v1 = quantizeInt4(pos, 1, 8, { groupSize: 8, symmetric: false, minZero: 1 });
  assert.deepEqual([...v1.zeros!], [1]);
  assert.ok(v1.scales[0]! >= 3.75 / 14 && v1.scales[0]! === Math.fround(v1.scales[0]!) && v1.scales[0]! - 3.75 / 14 < 1e-7);
  const deq = dequantize(v1);
  pos.forEach((x, i) => assert.ok(Math.abs(deq[i]! - x) <= v1.scales[0]! / 2 + 1e-7));
});

test('int4 groups of 128 (and a partial last group): error <= s / 2, f16 scales rounded up', () => {
  const N = 8, K = 320; // groups 128, 128, 64
  const w = randomWeights(N * K, 11, 0.02);
  for (const symmetric of [true, false]) {
    const h = quantizeInt4(w, N, K, { groupSize: 128, symmetric, f16Scales: true, minZero: 1 });
    const numG = numGroups(K, 128);
    assert.equal(numG, 3);
    assert.equal(h.scales.length, N * numG);
    const deq = dequantize(h);
    for (let i = 0; i < w.length; i++) {
      const s = h.scales[Math.floor(i / K) * numG + Math.floor((i % K) / 128)]!;
      assert.ok(Math.abs(deq[i]! - w[i]!) <= s / 2 + Math.abs(w[i]!) * 2 ** -23, `${symmetric ? 'sym' : 'asym'} element ${i}`);
    }
    for (const s of h.scales) assert.equal(f16ToF32(f32ToF16(s)), s, `scale ${s} is not an f16 value`);
  }
});
