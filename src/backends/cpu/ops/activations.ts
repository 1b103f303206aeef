/**
 * Activations: gated (act(gate) * up over gateUp = gate | up) and plain.
 * GELU 'none' is the exact erf form; 'tanh' is HF "gelu_pytorch_tanh".
 */
import type { GeluApprox, Tensor } from '../../backend.js';
import { f32Of, internal, lastDim, requireCount, requireRows } from '../cpu-tensor.js';
import { map } from './elementwise.js';

const SQRT1_2 = Math.SQRT1_2;
const TWO_OVER_SQRT_PI = 2 / Math.sqrt(Math.PI);
const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);
const GELU_TANH_COEF = 0.044715;
/** erfc(5) ~ 1.5e-12: beyond this erf is +-1 to far better than f32 */
const ERF_SATURATION = 5;

/**
 * erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_n 2^n x^(2n+1) / (1*3*...*(2n+1))  (A&S 7.1.6).
 * Every term is positive, so there is no cancellation: relative error ~1e-15 for |x| < 5.
 */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax >= ERF_SATURATION) return x > 0 ? 1 : -1;
  if (Number.isNaN(x)) return NaN;
  const x2 = ax * ax;
  let term = ax;
  let sum = ax;
  for (let n = 1; term > sum * 1e-17; n++) {
    term *= (2 * x2) / (2 * n + 1);
    sum += term;
  }
  const r = Math.min(1, TWO_OVER_SQRT_PI * Math.exp(-x2) * sum);
  return x < 0 ? -r : r;
}

export function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

export function geluErf(x: number): number {
  return 0.5 * x * (1 + erf(x * SQRT1_2));
}

export function geluTanh(x: number): number {
  return 0.5 * x * (1 + Math.tanh(SQRT_2_OVER_PI * (x + GELU_TANH_COEF * x * x * x)));
}

function geluFn(approx: GeluApprox): (x: number) => number {
  if (approx === 'none') return geluErf;
  if (approx === 'tanh') return geluTanh;
  throw internal(`gelu: unknown approximation '${String(approx)}'`, { approx });
}

function gatedMul(op: string, out: Tensor, gateUp: Tensor, numTokens: number, act: (x: number) => number): void {
  requireCount(numTokens, op, 'numTokens');
  const width = lastDim(gateUp);
  if (width % 2 !== 0) throw internal(`${op}: gateUp rows have odd width ${width}`, { shape: gateUp.shape });
  const I = width / 2;
  const gd = f32Of(gateUp, op, 'gateUp');
  const od = f32Of(out, op, 'out');
  requireRows(gateUp, gd, numTokens, width, op, 'gateUp');
  requireRows(out, od, numTokens, I, op, 'out');
  for (let t = 0; t < numTokens; t++) {
    const g = t * width;
    const o = t * I;
    for (let i = 0; i < I; i++) od[o + i] = act(gd[g + i]) * gd[g + I + i];
  }
}


export function siluMul(out: Tensor, gateUp: Tensor, numTokens: number): void {
  gatedMul('siluMul', out, gateUp, numTokens, silu);
}

export function geluMul(out: Tensor, gateUp: Tensor, numTokens: number, approx: GeluApprox): void {
  gatedMul('geluMul', out, gateUp, numTokens, geluFn(approx));
}

export function gelu(out: Tensor, x: Tensor, numTokens: number, approx: GeluApprox): void {
  map('gelu', out, x, numTokens, geluFn(approx));
}

export function relu(out: Tensor, x: Tensor, numTokens: number): void {
  map('relu', out, x, numTokens, (v) => (v < 0 ? 0 : v));
}
