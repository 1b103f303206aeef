/** Dequantization of any canonical quantized weight: the reference every backend is checked against. */
import type { HostQuantWeight } from './types.js';
import { dequantizeFp8Rows } from './fp8.js';
import { dequantizeInt4Rows } from './int4.js';
import { dequantizeInt8Rows } from './int8.js';

/** The arrays of a quantized weight, wherever they live (host weight or CPU tensors). */
export type QuantArrays = Omit<HostQuantWeight, 'inputScale'>;

/** Rows n0..n1 of w [N, K] into out [(n1 - n0), K]. */
export function dequantizeRows(w: QuantArrays, n0: number, n1: number, out: Float32Array): void {
  const K = w.shape[1];
  switch (w.kind) {
    case 'fp8': return dequantizeFp8Rows(w.qweight, w.scales, K, n0, n1, out);
    case 'int8': return dequantizeInt8Rows(w.qweight, w.scales, K, w.groupSize, n0, n1, out);
    case 'int4': return dequantizeInt4Rows(w.qweight, w.scales, w.zeros, K, w.groupSize, n0, n1, out);
  }
}

/** The whole weight as f32 [N, K]. */
export function dequantize(w: HostQuantWeight | QuantArrays): Float32Array {
  const [N, K] = w.shape;
  const out = new Float32Array(N * K);
  dequantizeRows(w, 0, N, out);
  return out;
}
