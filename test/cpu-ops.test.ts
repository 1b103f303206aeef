/**
 * CPU backend: memory ops and every non-attention op against naive implementations
 * written here, on fresh random inputs with odd sizes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend, cpuData } from '../src/backends/cpu/cpu-backend.js';
import { erf } from '../src/backends/cpu/ops/activations.js';
import { gemmTN } from '../src/backends/cpu/ops/gemm.js';
import type { Tensor } from '../src/backends/backend.js';
import { f32ToBf16, f32ToF16 } from '../src/weights/dtype.js';
import { assertClose, assertInternal, rng } from './helpers/random.js';

const be = new CpuBackend();


function randn(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() * 2 - 1) * scale;
  return out;
}

function t32(shape: number[], seed: number, scale = 1): Tensor {
  return be.fromF32(shape, randn(shape.reduce((a, b) => a * b, 1), seed, scale));
}

function f32(t: Tensor): Float32Array {
  return cpuData(t) as Float32Array;
}



function naiveLinear(x: Float32Array, w: Float32Array, bias: Float32Array | null, T: number, K: number, N: number): Float32Array {
  const out = new Float32Array(T * N);
  for (let t = 0; t < T; t++) {
    for (let n = 0; n < N; n++) {
      let s = bias ? bias[n]! : 0;
      for (let k = 0; k < K; k++) s += x[t * K + k]! * w[n * K + k]!;
      out[t * N + n] = s;
    }
  }
  return out;
}

test('linear matches a naive GEMM over odd shapes, with and without bias', () => {
  const shapes: [number, number, number][] = [[7, 37, 19], [1, 37, 19], [4, 3, 5], [9, 1030, 150], [13, 64, 1]];
  for (const [T, K, N] of shapes) {
    for (const withBias of [false, true]) {
      const x = t32([T + 2, K], T * 31 + K);
      const w = t32([N, K], N * 7 + K);
      const bias = withBias ? t32([N], N) : null;
      const out = be.empty([T + 2, N], 'f32');
      f32(out).fill(NaN);
      be.linear(out, x, w, bias, T);
      const expected = naiveLinear(f32(x), f32(w), bias && f32(bias), T, K, N);
      assertClose(f32(out).subarray(0, T * N), expected, 1e-5, `linear ${T}x${K}x${N} bias=${withBias}`);
      assert.ok(f32(out).subarray(T * N).every(Number.isNaN), 'rows past numTokens are untouched');
    }
  }
});

test('linear rejects a wrong inner dimension, i32 inputs and out aliasing x', () => {
  const w = t32([5, 8], 1);
  assertInternal(() => be.linear(be.empty([3, 5], 'f32'), t32([3, 7], 2), w, null, 3), /linear: x has rows of 7 elements, expected 8/);
  assertInternal(() => be.linear(be.empty([2, 5], 'f32'), t32([2, 8], 2), w, null, 3), /linear: x .*fewer than 3 rows/);
  assertInternal(() => be.linear(be.empty([3, 5], 'f32'), be.empty([3, 8], 'i32'), w, null, 3), /linear: x must be a float tensor, got i32/);
  const square = t32([4, 4], 3);
  const x = t32([2, 4], 4);
  assertInternal(() => be.linear(x, x, square, null, 2), /alias/);
});

test('linear throughput (printed, not asserted)', () => {
  const [T, K, N] = [64, 512, 512];
  const x = randn(T * K, 1), w = randn(N * K, 2), out = new Float32Array(T * N);
  gemmTN(out, x, w, T, K, N);
  const reps = 10;
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) gemmTN(out, x, w, T, K, N);
  const ms = (performance.now() - t0) / reps;
  console.log(`linear ${T}x${K}x${N}: ${ms.toFixed(2)} ms, ${((2 * T * K * N) / ms / 1e6).toFixed(2)} GFLOP/s`);
});

function naiveRms(x: Float32Array, w: Float32Array, eps: number, offset: number, T: number, H: number): Float32Array {
  const out = new Float32Array(T * H);
  for (let t = 0; t < T; t++) {
    const row = x.subarray(t * H, (t + 1) * H);
    const ms = row.reduce((a, v) => a + v * v, 0) / H;
    for (let i = 0; i < H; i++) out[t * H + i] = (row[i]! / Math.sqrt(ms + eps)) * (w[i]! + offset);
  }
  return out;
}

function naiveLayerNorm(x: Float32Array, w: Float32Array, b: Float32Array | null, eps: number, T: number, H: number): Float32Array {
  const out = new Float32Array(T * H);
  for (let t = 0; t < T; t++) {
    const row = x.subarray(t * H, (t + 1) * H);
    const mean = row.reduce((a, v) => a + v, 0) / H;
    const variance = row.reduce((a, v) => a + (v - mean) ** 2, 0) / H;
    for (let i = 0; i < H; i++) out[t * H + i] = ((row[i]! - mean) / Math.sqrt(variance + eps)) * w[i]! + (b ? b[i]! : 0);
  }
  return out;
}

test('rmsNorm: plain, Gemma weight offset, fused residual, out aliasing x', () => {
  const [T, H] = [7, 37];
  const x = t32([T, H], 10, 3);
  const w = t32([H], 11);
  const out = be.empty([T, H], 'f32');
  be.rmsNorm(out, x, w, 1e-6, T);
  assertClose(f32(out), naiveRms(f32(x), f32(w), 1e-6, 0, T, H), 1e-5, 'rmsNorm');
  be.rmsNorm(out, x, w, 1e-5, T, null, 1);
  assertClose(f32(out), naiveRms(f32(x), f32(w), 1e-5, 1, T, H), 1e-5, 'rmsNorm offset 1');

  const residual = t32([T, H], 12);
  const sum = f32(residual).map((r, i) => r + f32(x)[i]!);
  be.rmsNorm(x, x, w, 1e-6, T, residual);
  assertClose(f32(residual), sum, 1e-6, 'residual += x');
  assertClose(f32(x), naiveRms(sum, f32(w), 1e-6, 0, T, H), 1e-5, 'rmsNorm(residual) into x');
});

test('layerNorm: with and without bias, fused residual', () => {
  const [T, H] = [5, 19];
  const x = t32([T, H], 20, 2);
  const w = t32([H], 21);
  const b = t32([H], 22);
  const out = be.empty([T, H], 'f32');
  be.layerNorm(out, x, w, b, 1e-5, T);
  assertClose(f32(out), naiveLayerNorm(f32(x), f32(w), f32(b), 1e-5, T, H), 1e-5, 'layerNorm bias');
  be.layerNorm(out, x, w, null, 1e-5, T);
  assertClose(f32(out), naiveLayerNorm(f32(x), f32(w), null, 1e-5, T, H), 1e-5, 'layerNorm no bias');
  const residual = t32([T, H], 23);
  const sum = f32(residual).map((r, i) => r + f32(x)[i]!);
  be.layerNorm(out, x, w, b, 1e-5, T, residual);
  assertClose(f32(residual), sum, 1e-6, 'residual += x');
  assertClose(f32(out), naiveLayerNorm(sum, f32(w), f32(b), 1e-5, T, H), 1e-5, 'layerNorm(residual)');
  assertInternal(() => be.layerNorm(out, x, t32([H + 1], 1), null, 1e-5, T), /layerNorm: x has rows of 19 elements, expected 20/);
});

/** Maclaurin series of erf, fine for |x| <= 3 in f64 (terms stay below ~200). */
function seriesErf(x: number): number {
  let sum = 0, term = x;
  for (let n = 0; n < 200; n++) {
    sum += term / (2 * n + 1);
    term *= (-x * x) / (n + 1);
  }
  return (2 / Math.sqrt(Math.PI)) * sum;
}

test('erf is accurate to 1e-7 against tabulated values and its Maclaurin series', () => {
  const table: [number, number][] = [[0, 0], [0.5, 0.5204998778130465], [1, 0.8427007929497149], [2, 0.9953222650189527], [3, 0.9999779095030014], [-1, -0.8427007929497149], [6, 1]];
  for (const [x, v] of table) assert.ok(Math.abs(erf(x) - v) < 1e-12, `erf(${x}) = ${erf(x)}, expected ${v}`);
  for (let x = -3; x <= 3; x += 0.0137) assert.ok(Math.abs(erf(x) - seriesErf(x)) < 1e-7, `erf(${x})`);
});

test('siluMul, geluMul (erf and tanh), gelu and relu match their formulas', () => {
  const [T, I] = [7, 19];
  const gateUp = t32([T, 2 * I], 30, 4);
  const g = f32(gateUp);
  const out = be.empty([T, I], 'f32');
  const gated = (act: (v: number) => number) => {
    const e = new Float32Array(T * I);
    for (let t = 0; t < T; t++) for (let i = 0; i < I; i++) e[t * I + i] = act(g[t * 2 * I + i]!) * g[t * 2 * I + I + i]!;
    return e;
  };
  const silu = (v: number) => v / (1 + Math.exp(-v));
  const geluErf = (v: number) => 0.5 * v * (1 + seriesErf(v / Math.SQRT2));
  const geluTanh = (v: number) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));
  be.siluMul(out, gateUp, T);
  assertClose(f32(out), gated(silu), 1e-6, 'siluMul');
  be.geluMul(out, gateUp, T, 'none');
  assertClose(f32(out), gated(geluErf), 1e-6, 'geluMul erf');
  be.geluMul(out, gateUp, T, 'tanh');
  assertClose(f32(out), gated(geluTanh), 1e-6, 'geluMul tanh');

  const x = t32([T, 23], 31, 4);
  const y = be.empty([T, 23], 'f32');
  be.gelu(y, x, T, 'none');
  assertClose(f32(y), f32(x).map(geluErf), 1e-6, 'gelu erf');
  be.gelu(y, x, T, 'tanh');
  assertClose(f32(y), f32(x).map(geluTanh), 1e-6, 'gelu tanh');
  be.relu(y, x, T);
  assertClose(f32(y), f32(x).map((v) => Math.max(0, v)), 0, 'relu');
  assertInternal(() => be.siluMul(be.empty([T, I], 'f32'), t32([T, 2 * I + 1], 1), T), /odd width/);
});

test('add (aliased), copy, gatherRows and embedding', () => {
  const [T, H] = [7, 13];
  const a = t32([T + 1, H], 40);
  const b = t32([T + 1, H], 41);
  const a0 = Float32Array.from(f32(a));
  be.add(a, a, b, T);
  assertClose(f32(a).subarray(0, T * H), a0.subarray(0, T * H).map((v, i) => v + f32(b)[i]!), 1e-6, 'add');
  assertClose(f32(a).subarray(T * H), a0.subarray(T * H), 0, 'add leaves row T alone');

  const out = be.empty([T, H], 'f32');
  be.copy(out, b, T);
  assertClose(f32(out), f32(b).subarray(0, T * H), 0, 'copy');

  const table = t32([11, H], 42);
  const ids = be.fromI32([T], Int32Array.from([3, 0, 10, 3, 7, 1, 2]));
  for (const run of [() => be.embedding(out, table, ids, T), () => be.gatherRows(out, table, ids, T)]) {
    f32(out).fill(0);
    run();
    for (let t = 0; t < T; t++) {
      const id = (cpuData(ids) as Int32Array)[t]!;
      assertClose(f32(out).subarray(t * H, (t + 1) * H), f32(table).subarray(id * H, (id + 1) * H), 0, `row ${t}`);
    }
  }
  const bad = be.fromI32([2], Int32Array.from([1, 11]));
  assertInternal(() => be.embedding(out, table, bad, 2), /embedding: ids\[1\] = 11 is outside table rows 0..10/);
  assertInternal(() => be.gatherRows(out, table, ids, 3 + T), /gatherRows: out .*fewer than 10 rows/);
});

test('embeddingShard: rows of ids inside the shard, zeros for ids below and above it', () => {
  const [V, H, start, rows] = [20, 5, 8, 6]; // the shard holds vocab rows 8..13
  const whole = randn(V * H, 43);
  const table = be.fromF32([rows, H], whole.slice(start * H, (start + rows) * H));
  const idList = [8, 13, 7, 14, 0, 19, 10, 8];
  const T = idList.length;
  const ids = be.fromI32([T], Int32Array.from(idList));
  const out = be.fromF32([T + 1, H], new Float32Array((T + 1) * H).fill(9));
  be.embeddingShard(out, table, ids, T, start);
  const want = new Float32Array((T + 1) * H).fill(9);
  idList.forEach((id, t) => {
    for (let c = 0; c < H; c++) want[t * H + c] = id >= start && id < start + rows ? whole[id * H + c]! : 0;
  });
  assertClose(f32(out), want, 0, 'embeddingShard (row T untouched)');
  // the shards of every rank sum to the whole lookup
  const sum = new Float32Array(T * H);
  for (let r = 0; r < V / 4; r++) {
    const part = be.fromF32([4, H], whole.slice(r * 4 * H, (r + 1) * 4 * H));
    be.embeddingShard(out, part, ids, T, r * 4);
    f32(out).subarray(0, T * H).forEach((v, i) => { sum[i] += v; });
  }
  const full = be.empty([T, H], 'f32');
  be.embedding(full, be.fromF32([V, H], whole), ids, T);
  assertClose(sum, f32(full), 0, 'sum of the shards');
  assertInternal(() => be.embeddingShard(out, table, ids, T, -1), /embeddingShard: vocabStart must be a non-negative integer, got -1/);
  assertInternal(() => be.embeddingShard(out, table, ids, T + 2, 0), /embeddingShard: out .*fewer than/);
});

test('memory: f32 storage for half dtypes, views share storage, downloads copy, free', async () => {
  assert.equal(be.device, 'cpu');
  assert.equal(be.activationDtype, 'f32');
  const vals = [1.5, -2.25, 0.099609375, 65504];
  const bf16 = new Uint16Array(vals.map(f32ToBf16));
  const f16 = new Uint16Array(vals.map(f32ToF16));
  const tb = be.fromBytes([2, 2], 'BF16', new Uint8Array(bf16.buffer), 'bf16');
  assert.equal(tb.dtype, 'f32');
  assert.deepEqual([...(await be.downloadF32(tb))], [1.5, -2.25, 0.099609375, 65536]);
  const th = be.fromBytes([4], 'F16', new Uint8Array(f16.buffer), 'f16');
  assert.deepEqual([...(await be.downloadF32(th))], vals);
  const unaligned = new Uint8Array(17);
  new DataView(unaligned.buffer).setFloat32(1, 3.5, true);
  new DataView(unaligned.buffer).setFloat32(5, -1, true);
  assert.deepEqual([...f32(be.fromBytes([2], 'F32', unaligned.subarray(1, 9), 'f32'))], [3.5, -1]);
  const i64 = new BigInt64Array([5n, -7n, 2147483647n]);
  const ti = be.fromBytes([3], 'I64', new Uint8Array(i64.buffer), 'i32');
  assert.equal(ti.dtype, 'i32');
  assert.deepEqual([...(await be.downloadI32(ti))], [5, -7, 2147483647]);
  assertInternal(() => be.fromBytes([3], 'F32', new Uint8Array(8), 'f32'), /hold 2 elements, shape \[3\] needs 3/);
  assertInternal(() => be.fromBytes([1], 'I64', new Uint8Array(new BigInt64Array([1n << 40n]).buffer), 'i32'), /does not fit/);

  const base = be.fromF32([2, 3], Float32Array.from([1, 2, 3, 4, 5, 6]), 'bf16');
  assert.equal(base.dtype, 'f32');
  const v = be.view(base, [4]);
  assert.deepEqual(v.shape, [4]);
  be.writeF32(v, Float32Array.from([9, 8]));
  assert.deepEqual([...f32(base)], [9, 8, 3, 4, 5, 6]);
  const copy = await be.downloadF32(base);
  copy[0] = 100;
  assert.equal(f32(base)[0], 9);
  assertInternal(() => be.view(base, [7]), /view: shape \[7\] needs 7 elements/);
  assertInternal(() => be.writeI32(base, Int32Array.from([1])), /writeI32: dst must be an i32 tensor/);
  await be.synchronize();

  be.free(base);
  assertInternal(() => be.copy(be.empty([2, 3], 'f32'), base, 2), /used after free/);
});
