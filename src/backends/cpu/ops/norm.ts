/**
 * RMSNorm and LayerNorm over rows of H = weight length, each with the fused residual
 * add: residual += x (in place), then out = norm(residual). `out` may alias `x`.
 * Statistics are accumulated in f64.
 */
import type { QkNormParams, Tensor } from '../../backend.js';
import { f32Of, requireCount, requireLength, requireRows } from '../cpu-tensor.js';

interface NormRows {
  readonly out: Float32Array;
  /** the rows to normalise: residual (after += x) when fused, else x */
  readonly src: Float32Array;
  readonly weight: Float32Array;
  readonly H: number;
}

function prepare(op: string, out: Tensor, x: Tensor, weight: Tensor, numTokens: number, residual: Tensor | null | undefined): NormRows {
  requireCount(numTokens, op, 'numTokens');
  const wd = f32Of(weight, op, 'weight');
  const H = wd.length;
  const xd = f32Of(x, op, 'x');
  const od = f32Of(out, op, 'out');
  requireRows(x, xd, numTokens, H, op, 'x');
  requireRows(out, od, numTokens, H, op, 'out');
  if (!residual) return { out: od, src: xd, weight: wd, H };
  const rd = f32Of(residual, op, 'residual');
  requireRows(residual, rd, numTokens, H, op, 'residual');
  const n = numTokens * H;
  for (let i = 0; i < n; i++) rd[i] += xd[i];
  return { out: od, src: rd, weight: wd, H };
}

export function rmsNorm(out: Tensor, x: Tensor, weight: Tensor, eps: number, numTokens: number, residual?: Tensor | null, weightOffset = 0): void {
  const { out: od, src, weight: wd, H } = prepare('rmsNorm', out, x, weight, numTokens, residual);
  for (let t = 0; t < numTokens; t++) {
    const o = t * H;
    let sumSq = 0;
    for (let i = 0; i < H; i++) sumSq += src[o + i] * src[o + i];
    const inv = 1 / Math.sqrt(sumSq / H + eps);
    for (let i = 0; i < H; i++) od[o + i] = src[o + i] * inv * (wd[i] + weightOffset);
  }
}

export function layerNorm(out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | null, eps: number, numTokens: number, residual?: Tensor | null): void {
  const op = 'layerNorm';
  const { out: od, src, weight: wd, H } = prepare(op, out, x, weight, numTokens, residual);
  const bd = bias ? f32Of(bias, op, 'bias') : null;
  if (bias && bd) requireLength(bias, bd, H, op, 'bias');
  for (let t = 0; t < numTokens; t++) {
    const o = t * H;
    let sum = 0;
    for (let i = 0; i < H; i++) sum += src[o + i];
    const mean = sum / H;
    let sumSq = 0;
    for (let i = 0; i < H; i++) {
      const d = src[o + i] - mean;
      sumSq += d * d;
    }
    const inv = 1 / Math.sqrt(sumSq / H + eps);
    for (let i = 0; i < H; i++) od[o + i] = (src[o + i] - mean) * inv * wd[i] + (bd ? bd[i] : 0);
  }
}

/** In place: RMSNorm over each q and k head of the qkv rows (v untouched); see Backend.qkRmsNorm. */
export function qkRmsNorm(qkv: Tensor, qWeight: Tensor, kWeight: Tensor, eps: number, numTokens: number, p: QkNormParams): void {
  const op = 'qkRmsNorm';
  requireCount(numTokens, op, 'numTokens');
  const { numHeads, numKvHeads, headDim } = p;
  const offset = p.weightOffset ?? 0;
  const rowWidth = (numHeads + 2 * numKvHeads) * headDim;
  const d = f32Of(qkv, op, 'qkv');
  requireRows(qkv, d, numTokens, rowWidth, op, 'qkv');
  const qw = f32Of(qWeight, op, 'qWeight');
  const kw = f32Of(kWeight, op, 'kWeight');
  requireLength(qWeight, qw, headDim, op, 'qWeight');
  requireLength(kWeight, kw, headDim, op, 'kWeight');
  const normHead = (o: number, w: Float32Array): void => {
    let sumSq = 0;
    for (let i = 0; i < headDim; i++) sumSq += d[o + i] * d[o + i];
    const inv = 1 / Math.sqrt(sumSq / headDim + eps);
    for (let i = 0; i < headDim; i++) d[o + i] = d[o + i] * inv * (w[i] + offset);
  };
  for (let t = 0; t < numTokens; t++) {
    const row = t * rowWidth;
    for (let h = 0; h < numHeads; h++) normHead(row + h * headDim, qw);
    for (let h = 0; h < numKvHeads; h++) normHead(row + (numHeads + h) * headDim, kw);
  }
}
