/**
 * linear with a QuantizedWeight: the reference of every quantized format. The weight is
 * dequantized tile by tile (rows filling WEIGHT_TILE_BYTES of f32) into one scratch buffer and
 * each tile runs through the f32 GEMM; FP8 also quantizes the activations to E4M3 and back first
 * (static input scale, or per token). Dequantizing per call rather than caching f32 copies keeps
 * a quantized model at its quantized size in memory, which is what a CPU user loading INT4 wants;
 * the extra O(N * K) per call is at most the GEMM's own cost at one token.
 */
import type { QuantizedWeight, Tensor } from '../../backend.js';
import { dequantizeRows } from '../../../weights/quant/dequantize.js';
import { fakeQuantizeActivationsFp8 } from '../../../weights/quant/fp8.js';
import { f32Of, i32Of, internal, requireCount, requireLength, requireRows } from '../cpu-tensor.js';
import { gemmTN } from './gemm.js';

const WEIGHT_TILE_BYTES = 256 * 1024;
let scratch = new Float32Array(0);

function scratchOf(n: number): Float32Array {
  if (scratch.length < n) scratch = new Float32Array(n);
  return scratch;
}

export function quantLinear(out: Tensor, x: Tensor, w: QuantizedWeight, bias: Tensor | null, numTokens: number): void {
  const op = 'linear';
  requireCount(numTokens, op, 'numTokens');
  const [N, K] = w.shape;
  const qweight = i32Of(w.qweight, op, 'qweight');
  const scales = f32Of(w.scales, op, 'scales');
  const zeros = w.zeros ? f32Of(w.zeros, op, 'zeros') : null;
  const xd = f32Of(x, op, 'x');
  const od = f32Of(out, op, 'out');
  requireRows(x, xd, numTokens, K, op, 'x');
  requireRows(out, od, numTokens, N, op, 'out');
  if (od.buffer === xd.buffer && od.byteOffset < xd.byteOffset + xd.byteLength && xd.byteOffset < od.byteOffset + od.byteLength) throw internal('linear: out must not alias x');
  const bd = bias ? f32Of(bias, op, 'bias') : null;
  if (bias && bd) requireLength(bias, bd, N, op, 'bias');
  const T = numTokens;
  const tileRows = Math.max(1, Math.min(N, Math.floor(WEIGHT_TILE_BYTES / (4 * Math.max(K, 1)))));
  const buf = scratchOf(tileRows * K + T * tileRows + (w.kind === 'fp8' ? T * K : 0));
  const wTile = buf.subarray(0, tileRows * K);
  const oTile = buf.subarray(tileRows * K, tileRows * K + T * tileRows);
  let xin = xd;
  if (w.kind === 'fp8') {
    xin = buf.subarray(tileRows * K + T * tileRows, tileRows * K + T * tileRows + T * K);
    const inputScale = w.inputScale ? f32Of(w.inputScale, op, 'inputScale')[0]! : null;
    fakeQuantizeActivationsFp8(xd, T, K, inputScale, xin);
  }
  const arrays = { kind: w.kind, shape: w.shape, groupSize: w.groupSize, qweight, scales, zeros };
  for (let n0 = 0; n0 < N; n0 += tileRows) {
    const n1 = Math.min(N, n0 + tileRows);
    const rows = n1 - n0;
    dequantizeRows(arrays, n0, n1, wTile);
    gemmTN(oTile, xin, wTile, T, K, rows);
    for (let t = 0; t < T; t++) od.set(oTile.subarray(t * rows, (t + 1) * rows), t * N + n0);
  }
  if (bd) {
    for (let t = 0; t < T; t++) for (let n = 0; n < N; n++) od[t * N + n] += bd[n]!;
  }
}
