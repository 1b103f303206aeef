// FP8 E4M3 (OCP e4m3fn) encode / decode against hand-computed values and a brute-force nearest
// search; per-tensor / per-channel weight quantization; the dynamic per-token activation reference.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  decodeE4M3, E4M3_TO_F32, encodeE4M3, fakeQuantizeActivationsFp8, FP8_E4M3_MAX, FP8_MIN_ACTIVATION_SCALE, quantizeFp8,
} from '../src/weights/quant/fp8.js';
import { dequantize } from '../src/weights/quant/dequantize.js';
import { isPeregrineError } from '../src/errors.js';

test('E4M3 encodes hand-computed values', () => {
  const cases: [number, number, number][] = [
    // [input, bits, decoded]
    [0, 0x00, 0],
    [1, 0x38, 1], // exponent 7 (bias 7), mantissa 0
    [0.1, 0x1d, 0.1015625], // 1.6 * 2^-4 -> mantissa 4.8 -> 5: 1.625 * 2^-4
    [-3.75, 0xc7, -3.75], // 1.875 * 2^1: exponent 8, mantissa 7
    [240, 0x77, 240], // 1.875 * 2^7
    [448, 0x7e, 448], // the largest finite value, 1.75 * 2^8
    [447, 0x7e, 448], // rounds up to it
    [500, 0x7e, 448], // saturates
    [1e6, 0x7e, 448],
    [-500, 0xfe, -448],
    [Infinity, 0x7e, 448], // saturating conversion: no infinities in E4M3
    [-Infinity, 0xfe, -448],
    [1.0625, 0x38, 1], // halfway between 1 and 1.125: ties to even mantissa (0)
    [1.1875, 0x3a, 1.25], // halfway between 1.125 and 1.25: ties to even mantissa (2)
    [2 ** -6, 0x08, 2 ** -6], // smallest normal
    [2 ** -9, 0x01, 2 ** -9], // smallest subnormal
    [7 * 2 ** -9, 0x07, 7 * 2 ** -9], // largest subnormal
    [2 ** -10, 0x00, 0], // half the smallest subnormal: ties to even (0)
    [3 * 2 ** -10, 0x02, 2 ** -8], // 1.5 subnormal steps -> 2
    [2 ** -6 - 2 ** -12, 0x08, 2 ** -6], // 7.875 steps rounds up into the normals
    [-(2 ** -11), 0x80, -0], // underflows to negative zero
  ];
  for (const [x, bits, value] of cases) {
    assert.equal(encodeE4M3(x), bits, `encode(${x}) = 0x${encodeE4M3(x).toString(16)}, want 0x${bits.toString(16)}`);
    assert.ok(Object.is(decodeE4M3(bits), value), `decode(0x${bits.toString(16)}) = ${decodeE4M3(bits)}, want ${value}`);
  }
});

test('E4M3 NaN: 0x7f and 0xff decode to NaN, NaN encodes to NaN', () => {
  assert.ok(Number.isNaN(decodeE4M3(0x7f)) && Number.isNaN(decodeE4M3(0xff)));
  assert.equal(encodeE4M3(NaN) & 0x7f, 0x7f);
  assert.equal(E4M3_TO_F32.filter((v) => Number.isNaN(v)).length, 2);
  assert.equal(Math.max(...E4M3_TO_F32.filter((v) => !Number.isNaN(v))), FP8_E4M3_MAX);
});

test('E4M3: every finite code round-trips, and encode is the nearest code (ties to even) on random inputs', () => {
  for (let b = 0; b < 256; b++) {
    if ((b & 0x7f) === 0x7f) continue;
    assert.equal(encodeE4M3(E4M3_TO_F32[b]!), b, `code 0x${b.toString(16)}`);
  }
  const finite = [...E4M3_TO_F32.entries()].filter(([b, v]) => !Number.isNaN(v) && b !== 0x80); // +0 stands for both zeros here
  let seed = 7;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  for (let i = 0; i < 20000; i++) {
    const x = Math.fround((rand() - 0.5) * 2 ** Math.floor(rand() * 24 - 12));
    if (Math.abs(x) >= FP8_E4M3_MAX) continue;
    let best = finite[0]!;
    for (const c of finite) {
      const d = Math.abs(c[1] - x), bd = Math.abs(best[1] - x);
      if (d < bd || (d === bd && (c[0] & 1) === 0 && (best[0] & 1) === 1)) best = c;
    }
    const got = encodeE4M3(x);
    assert.equal(Math.abs(E4M3_TO_F32[got]!), Math.abs(best[1]), `x=${x}: got 0x${got.toString(16)}, nearest 0x${best[0].toString(16)}`);
  }
});

test('quantizeFp8 per tensor: scale amax / 448, codes and dequantized values by hand', () => {
  // amax 4 -> scale 4/448; x / s = [112, -224, 448, 11.2 -> 11, 0, 56, -1.12 -> -1.125, 3.5]
  const w = Float32Array.from([1, -2, 4, 0.1, 0, 0.5, -0.01, 0.03125]);
  const h = quantizeFp8(w, 2, 4, 'tensor');
  const s = Math.fround(4 / 448);
  assert.deepEqual([...h.scales], [s]);
  assert.equal(h.groupSize, 4);
  const bytes = new Uint8Array(h.qweight.buffer);
  assert.deepEqual([...bytes].map((b) => E4M3_TO_F32[b]), [112, -224, 448, 11, 0, 56, -1.125, 3.5]);
  const deq = dequantize(h);
  [112, -224, 448, 11, 0, 56, -1.125, 3.5].forEach((q, i) => assert.equal(deq[i], Math.fround(q * s)));
});

test('quantizeFp8 per channel: one scale per row; error within half an E4M3 step of each value', () => {
  const N = 16, K = 64;
  const w = new Float32Array(N * K);
  let seed = 3;
  for (let i = 0; i < w.length; i++) w[i] = Math.sin((seed = seed * 16807 % 2147483647)) * (1 + (i % N));
  const h = quantizeFp8(w, N, K, 'channel');
  assert.equal(h.scales.length, N);
  const deq = dequantize(h);
  for (let n = 0; n < N; n++) {
    let amax = 0;
    for (let k = 0; k < K; k++) amax = Math.max(amax, Math.abs(w[n * K + k]!));
    assert.equal(h.scales[n], Math.fround(amax / 448));
    const s = h.scales[n]!;
    for (let k = 0; k < K; k++) {
      const x = w[n * K + k]!, err = Math.abs(deq[n * K + k]! - x);
      // relative 2^-4 for normals, 2^-10 * s below the smallest normal (subnormal step / 2)
      assert.ok(err <= Math.max(Math.abs(x) * 2 ** -4, s * 2 ** -10) * (1 + 1e-6), `row ${n} col ${k}: |${deq[n * K + k]} - ${x}| = ${err}`);
    }
  }
});

test('quantizeFp8 refuses K not divisible by 4 with PGN_ERR_UNSUPPORTED_FEATURE naming the tensor', () => {
  assert.throws(() => quantizeFp8(new Float32Array(6), 2, 3, 'tensor', 'layers.0.q_proj.weight'), (e: unknown) =>
    isPeregrineError(e, 'PGN_ERR_UNSUPPORTED_FEATURE') && e.message.includes('layers.0.q_proj.weight'));
});

test('dynamic per-token activations: each row scaled by its amax / 448, static rows by the input scale', () => {
  const K = 4;
  const x = Float32Array.from([1, -2, 4, 0.5, /* row 2 */ 0.3, 0, 0, 0, /* row 3 */ 0, 0, 0, 0]);
  const out = new Float32Array(x.length);
  const scales = fakeQuantizeActivationsFp8(x, 3, K, null, out);
  assert.deepEqual([...scales], [Math.fround(4 / 448), Math.fround(0.3 / 448), FP8_MIN_ACTIVATION_SCALE].map(Math.fround));
  // row 1: x / s = 112, -224, 448, 56, all exact in E4M3
  for (let k = 0; k < K; k++) assert.ok(Math.abs(out[k]! - x[k]!) <= 1e-6 * Math.abs(x[k]!));
  assert.ok(Math.abs(out[4]! - 0.3) < 1e-6); // the row's amax maps exactly onto 448
  assert.deepEqual([...out.subarray(8)], [0, 0, 0, 0]);
  // static: scale 0.5 -> 1 / 0.5 = 2 exact, -2 / 0.5 = -4 exact, 4 / 0.5 = 8, 0.5 / 0.5 = 1
  fakeQuantizeActivationsFp8(x, 1, K, 0.5, out);
  assert.deepEqual([...out.subarray(0, 4)], [1, -2, 4, 0.5]);
  // static saturation: 4 / 0.001 = 4000 -> 448 * 0.001
  fakeQuantizeActivationsFp8(x, 1, K, 0.001, out);
  assert.equal(out[2], Math.fround(448 * 0.001));
});
