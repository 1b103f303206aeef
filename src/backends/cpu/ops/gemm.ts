/**
 * linear: out [T, N] = x [T, K] @ w [N, K]^T (+ bias [N]), the "TN" GEMM.
 *
 * Every output is a dot product over contiguous K (x row . w row), unrolled by 4.
 * Weights are walked in tiles of rows that fit in L2; within a tile, four rows of x
 * share each pass over a weight row, so a weight element is loaded once per four
 * tokens. Sums are kept in f64 (JS numbers) and stored as f32.
 */
import type { Tensor } from '../../backend.js';
import { f32Of, internal, requireCount, requireLength, requireRows } from '../cpu-tensor.js';

/** bytes of weight rows kept hot while all token rows pass over them */
const WEIGHT_TILE_BYTES = 256 * 1024;
const ROWS_PER_PASS = 4;

export function linear(out: Tensor, x: Tensor, w: Tensor, bias: Tensor | null, numTokens: number): void {
  const op = 'linear';
  requireCount(numTokens, op, 'numTokens');
  if (w.shape.length !== 2) throw internal(`linear: weight must be 2-D [out, in], got [${w.shape.join(', ')}]`, { shape: w.shape });
  const [N, K] = w.shape as [number, number];
  const wd = f32Of(w, op, 'w');
  const xd = f32Of(x, op, 'x');
  const od = f32Of(out, op, 'out');
  requireLength(w, wd, N * K, op, 'w');
  requireRows(x, xd, numTokens, K, op, 'x');
  requireRows(out, od, numTokens, N, op, 'out');
  if (od.buffer === xd.buffer && rangesOverlap(od, xd)) throw internal('linear: out must not alias x');
  const bd = bias ? f32Of(bias, op, 'bias') : null;
  if (bias && bd) requireLength(bias, bd, N, op, 'bias');
  gemmTN(od, xd, wd, numTokens, K, N);
  if (bd) addBias(od, bd, numTokens, N);
}

/** out[t*N + n] = sum_k x[t*K + k] * w[n*K + k] */
export function gemmTN(out: Float32Array, x: Float32Array, w: Float32Array, T: number, K: number, N: number): void {
  const tileRows = Math.max(1, Math.floor(WEIGHT_TILE_BYTES / (4 * Math.max(K, 1))));
  for (let n0 = 0; n0 < N; n0 += tileRows) {
    const n1 = Math.min(N, n0 + tileRows);
    let t = 0;
    for (; t + ROWS_PER_PASS <= T; t += ROWS_PER_PASS) dot4Rows(out, x, w, t, n0, n1, K, N);
    for (; t < T; t++) dot1Row(out, x, w, t, n0, n1, K, N);
  }
}

function dot4Rows(out: Float32Array, x: Float32Array, w: Float32Array, t: number, n0: number, n1: number, K: number, N: number): void {
  const a0 = t * K, a1 = a0 + K, a2 = a1 + K, a3 = a2 + K;
  const k4 = K - (K & 3);
  for (let n = n0; n < n1; n++) {
    const b = n * K;
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    let k = 0;
    for (; k < k4; k += 4) {
      const w0 = w[b + k], w1 = w[b + k + 1], w2 = w[b + k + 2], w3 = w[b + k + 3];
      s0 += x[a0 + k] * w0 + x[a0 + k + 1] * w1 + x[a0 + k + 2] * w2 + x[a0 + k + 3] * w3;
      s1 += x[a1 + k] * w0 + x[a1 + k + 1] * w1 + x[a1 + k + 2] * w2 + x[a1 + k + 3] * w3;
      s2 += x[a2 + k] * w0 + x[a2 + k + 1] * w1 + x[a2 + k + 2] * w2 + x[a2 + k + 3] * w3;
      s3 += x[a3 + k] * w0 + x[a3 + k + 1] * w1 + x[a3 + k + 2] * w2 + x[a3 + k + 3] * w3;
    }
    for (; k < K; k++) {
      const wk = w[b + k];
      s0 += x[a0 + k] * wk;
      s1 += x[a1 + k] * wk;
      s2 += x[a2 + k] * wk;
      s3 += x[a3 + k] * wk;
    }
    const o = t * N + n;
    out[o] = s0;
    out[o + N] = s1;
    out[o + 2 * N] = s2;
    out[o + 3 * N] = s3;
  }
}

function dot1Row(out: Float32Array, x: Float32Array, w: Float32Array, t: number, n0: number, n1: number, K: number, N: number): void {
  const a = t * K;
  const k4 = K - (K & 3);
  for (let n = n0; n < n1; n++) {
    const b = n * K;
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    let k = 0;
    for (; k < k4; k += 4) {
      s0 += x[a + k] * w[b + k];
      s1 += x[a + k + 1] * w[b + k + 1];
      s2 += x[a + k + 2] * w[b + k + 2];
      s3 += x[a + k + 3] * w[b + k + 3];
    }
    for (; k < K; k++) s0 += x[a + k] * w[b + k];
    out[t * N + n] = s0 + s1 + (s2 + s3);
  }
}

function addBias(out: Float32Array, bias: Float32Array, T: number, N: number): void {
  for (let t = 0; t < T; t++) {
    const o = t * N;
    for (let n = 0; n < N; n++) out[o + n] += bias[n];
  }
}

function rangesOverlap(a: Float32Array, b: Float32Array): boolean {
  return a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;
}
