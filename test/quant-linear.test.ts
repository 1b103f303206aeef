// CpuBackend.linear with a QuantizedWeight equals the f32 linear on the dequantized weight
// (and, for FP8, on activations quantized to E4M3 and back), for every kind, with and without
// bias, one token and several (the 4-row and 1-row GEMM paths), weights spanning several tiles.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend, cpuData } from '../src/backends/cpu/cpu-backend.js';
import type { Tensor } from '../src/backends/backend.js';
import { quantizeWeight, type QuantizeOptions } from '../src/weights/quant/quantize.js';
import { uploadQuantWeight } from '../src/weights/quant/load.js';
import { dequantize } from '../src/weights/quant/dequantize.js';
import { fakeQuantizeActivationsFp8 } from '../src/weights/quant/fp8.js';
import { isPeregrineError } from '../src/errors.js';

function rand(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (s * 1664525 + 1013904223) >>> 0;
    a[i] = s / 2 ** 32 - 0.5;
  }
  return a;
}

/** out[t, n] = sum_k x[t, k] w[n, k] + b[n], in f64 */
function reference(x: Float32Array, w: Float32Array, b: Float32Array | null, T: number, N: number, K: number): Float64Array {
  const out = new Float64Array(T * N);
  for (let t = 0; t < T; t++) for (let n = 0; n < N; n++) {
    let s = b ? b[n]! : 0;
    for (let k = 0; k < K; k++) s += x[t * K + k]! * w[n * K + k]!;
    out[t * N + n] = s;
  }
  return out;
}

const CASES: [string, QuantizeOptions][] = [
  ['fp8 per tensor', { kind: 'fp8', fp8Scale: 'tensor' }],
  ['fp8 per channel', { kind: 'fp8', fp8Scale: 'channel' }],
  ['int8 per channel', { kind: 'int8' }],
  ['int4 sym g128', { kind: 'int4', groupSize: 128, symmetric: true }],
  ['int4 asym g64', { kind: 'int4', groupSize: 64, symmetric: false }],
];

for (const [label, opts] of CASES) {
  test(`CPU linear, ${label}: equals f32 math on the dequantized weight`, () => {
    const backend = new CpuBackend();
    const N = 300, K = 256; // 300 rows of 1 KiB: two weight tiles
    const w = rand(N * K, 1);
    const h = quantizeWeight(w, N, K, opts);
    const qw = uploadQuantWeight(h, backend);
    const wDeq = dequantize(h);
    for (const T of [1, 6]) {
      for (const withBias of [false, true]) {
        const x = rand(T * K, 2 + T);
        const bias = withBias ? rand(N, 9) : null;
        const out = backend.empty([T, N], 'f32');
        const biasT: Tensor | null = bias ? backend.fromF32([N], bias) : null;
        backend.linear(out, backend.fromF32([T, K], x), qw, biasT, T);
        let xRef = x;
        if (h.kind === 'fp8') {
          xRef = new Float32Array(T * K);
          fakeQuantizeActivationsFp8(x, T, K, h.inputScale, xRef);
        }
        const want = reference(xRef, wDeq, bias, T, N, K);
        const got = cpuData(out);
        for (let i = 0; i < T * N; i++) assert.ok(Math.abs(got[i]! - want[i]!) <= 1e-5 * (1 + Math.abs(want[i]!)), `${label} T=${T} bias=${withBias} [${i}]: ${got[i]} vs ${want[i]}`);
      }
    }
  });
}

test('CPU linear, fp8 with a static input scale: activations quantized with it (saturating)', () => {
  const backend = new CpuBackend();
  const N = 8, K = 16, T = 3;
  const w = rand(N * K, 4);
  const s = Math.fround(0.0005); // f32, as the backend holds it
  const h = { ...quantizeWeight(w, N, K, { kind: 'fp8' }), inputScale: s }; // x / s up to 1000 -> saturates at 448
  const x = rand(T * K, 5);
  const out = backend.empty([T, N], 'f32');
  backend.linear(out, backend.fromF32([T, K], x), uploadQuantWeight(h, backend), null, T);
  const xq = new Float32Array(T * K);
  fakeQuantizeActivationsFp8(x, T, K, s, xq);
  assert.ok(xq.some((v) => Math.abs(v) === Math.fround(448 * s)) && xq.every((v) => Math.abs(v) <= Math.fround(448 * s)));
  const want = reference(xq, dequantize(h), null, T, N, K);
  cpuData(out).forEach((v, i) => assert.ok(Math.abs(v - want[i]!) <= 1e-6, `[${i}]`));
});

test('CPU linear with a quantized weight checks x rows against K', () => {
  const backend = new CpuBackend();
  const qw = uploadQuantWeight(quantizeWeight(rand(64, 1), 4, 16, { kind: 'int8' }), backend);
  assert.throws(() => backend.linear(backend.empty([1, 4], 'f32'), backend.fromF32([1, 8], rand(8, 2)), qw, null, 1), /rows of 8 elements, expected 16/);
});
// GPU parity of the quantized kernels: test/gpu/cuda-quant.test.ts.
