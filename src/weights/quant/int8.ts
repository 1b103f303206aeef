/**
 * Weight-only INT8, symmetric: q = clamp(round_half_even(w / s), -128, 127), w' = q * s, with
 * s = amax / 127.5 per output channel (or per group along K): compressed-tensors' convention,
 * which spends the full code range (-amax lands on -128, +amax clamps to 127, both within s/2).
 */
import type { HostQuantWeight } from './types.js';
import { checkGroupSize, checkPackable, f32Up, numGroups, roundHalfEven, wordBytes } from './types.js';
import { amaxOf } from './fp8.js';

export const INT8_MIN = -128;
export const INT8_MAX = 127;
/** (qmax - qmin) / 2: the symmetric scale divides amax by this */
export const INT8_HALF_RANGE = 127.5;

/** f32 w [N, K] -> int8 codes with one scale per row (groupSize = K, the default) or per group. */
export function quantizeInt8(w: Float32Array, N: number, K: number, groupSize = K, name = 'weight'): HostQuantWeight {
  checkPackable('int8', N, K, name);
  const G = checkGroupSize(groupSize, K, name);
  const numG = numGroups(K, G);
  const codes = new Int8Array(N * K);
  const scales = new Float32Array(N * numG);
  for (let n = 0; n < N; n++) {
    for (let g = 0; g < numG; g++) {
      const k0 = n * K + g * G;
      const len = Math.min(G, K - g * G);
      const amax = amaxOf(w, k0, len);
      const s = amax > 0 ? f32Up(amax / INT8_HALF_RANGE) : 1;
      scales[n * numG + g] = s;
      for (let i = k0; i < k0 + len; i++) codes[i] = Math.min(INT8_MAX, Math.max(INT8_MIN, roundHalfEven(w[i]! / s)));
    }
  }
  return { kind: 'int8', shape: [N, K], groupSize: G, qweight: new Int32Array(codes.buffer), scales, zeros: null, inputScale: null };
}

/** Rows n0..n1 of an int8 weight, dequantized into out [(n1 - n0), K]. */
export function dequantizeInt8Rows(qweight: Int32Array, scales: Float32Array, K: number, groupSize: number, n0: number, n1: number, out: Float32Array): void {
  const b = wordBytes(qweight);
  const codes = new Int8Array(b.buffer, b.byteOffset, b.byteLength);
  const numG = numGroups(K, groupSize);
  for (let n = n0; n < n1; n++) {
    const src = n * K;
    const dst = (n - n0) * K;
    for (let g = 0; g < numG; g++) {
      const s = scales[n * numG + g]!;
      const kEnd = Math.min(K, (g + 1) * groupSize);
      for (let k = g * groupSize; k < kEnd; k++) out[dst + k] = codes[src + k]! * s;
    }
  }
}
