/**
 * Elementwise maps over the first numTokens rows: scale, softcap, clamp. `out` may alias `x`.
 */
import type { Tensor } from '../../backend.js';
import { f32Of, internal, lastDim, requireCount, requireRows } from '../cpu-tensor.js';

/** out[i] = fn(x[i]) over the first numTokens rows (activations.ts uses it too) */
export function map(op: string, out: Tensor, x: Tensor, numTokens: number, fn: (v: number) => number): void {
  requireCount(numTokens, op, 'numTokens');
  const width = lastDim(x);
  const xd = f32Of(x, op, 'x');
  const od = f32Of(out, op, 'out');
  requireRows(x, xd, numTokens, width, op, 'x');
  requireRows(out, od, numTokens, width, op, 'out');
  const n = numTokens * width;
  for (let i = 0; i < n; i++) od[i] = fn(xd[i]!);
}

export function scale(out: Tensor, x: Tensor, factor: number, numTokens: number): void {
  if (!Number.isFinite(factor)) throw internal(`scale: factor must be finite, got ${factor}`, { factor });
  map('scale', out, x, numTokens, (v) => v * factor);
}

/** out = cap * tanh(x / cap) */
export function softcap(out: Tensor, x: Tensor, cap: number, numTokens: number): void {
  if (!(cap > 0)) throw internal(`softcap: cap must be positive, got ${cap}`, { cap });
  map('softcap', out, x, numTokens, (v) => cap * Math.tanh(v / cap));
}

export function clamp(out: Tensor, x: Tensor, min: number, max: number, numTokens: number): void {
  if (!(min <= max)) throw internal(`clamp: min ${min} must not exceed max ${max}`, { min, max });
  map('clamp', out, x, numTokens, (v) => (v < min ? min : v > max ? max : v));
}
