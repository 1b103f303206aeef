/**
 * Weight-only INT4 in groups along K (128 by default). Codes are unsigned nibbles 0..15 and
 * w' = (q - zero) * s:
 * - symmetric: zero = 8, s = amax / 7.5 (GPTQ's and compressed-tensors' choice);
 * - asymmetric: the group range [min(0, xmin), max(0, xmax)] spread over 0..15, s = range / 15,
 *   zero = round(-min / s). GPTQ's original format stores zero - 1 in a nibble, so it cannot hold
 *   zero 0: with `minZero: 1` such groups take zero 1 and s = max / 14 instead.
 * Either way |w - w'| <= s / 2 for every element.
 *
 * Packing (the canonical layout): row n of qweight [N, K/8] holds q[n, 8j + i] in bits 4i..4i+3
 * of word j: GPTQ's order along K, and compressed-tensors' pack-quantized layout as it is.
 */
import type { HostQuantWeight } from './types.js';
import { checkGroupSize, checkPackable, f32Up, INT4_MAX, INT4_SYM_ZERO, numGroups, roundHalfEven, unsupportedQuant } from './types.js';
import { f16ToF32, f32ToF16 } from '../dtype.js';

export const INT4_PER_WORD = 8;
/** (qmax - qmin) / 2 of the signed range -8..7 */
export const INT4_HALF_RANGE = 7.5;
const F16_MAX = 65504;

export interface Int4Options {
  readonly groupSize: number;
  readonly symmetric: boolean;
  /** round each scale up to an f16 value (the format stores f16 scales) */
  readonly f16Scales?: boolean;
  /** smallest zero point the format can store (GPTQ v1: 1) */
  readonly minZero?: number;
}

/** values [N, K] (each 0..15) -> words [N, K/8] */
export function packInt4(values: ArrayLike<number>, N: number, K: number): Int32Array {
  const words = new Int32Array((N * K) / INT4_PER_WORD);
  for (let i = 0; i < N * K; i++) words[i >>> 3]! |= (values[i]! & 0xf) << ((i & 7) * 4);
  return words;
}

/** words [N, K/8] -> values [N, K] */
export function unpackInt4(words: Int32Array, N: number, K: number): Uint8Array {
  const out = new Uint8Array(N * K);
  for (let i = 0; i < N * K; i++) out[i] = (words[i >>> 3]! >>> ((i & 7) * 4)) & 0xf;
  return out;
}

/** f32 w [N, K] -> int4 codes, scales (and zeros when asymmetric) per group of K. */
export function quantizeInt4(w: Float32Array, N: number, K: number, opts: Int4Options, name = 'weight'): HostQuantWeight {
  checkPackable('int4', N, K, name);
  const G = checkGroupSize(opts.groupSize, K, name);
  const numG = numGroups(K, G);
  const words = new Int32Array((N * K) / INT4_PER_WORD); // codes packed as they are made
  const scales = new Float32Array(N * numG);
  const zeros = opts.symmetric ? null : new Float32Array(N * numG);
  const roundScale = opts.f16Scales ? (s: number) => f16Up(s, name) : f32Up;
  for (let n = 0; n < N; n++) {
    for (let g = 0; g < numG; g++) {
      const k0 = n * K + g * G;
      const len = Math.min(G, K - g * G);
      let lo = 0, hi = 0;
      for (let i = k0; i < k0 + len; i++) {
        const v = w[i]!;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      let s: number, z: number;
      if (opts.symmetric) {
        s = roundScale(Math.max(hi, -lo) / INT4_HALF_RANGE);
        z = INT4_SYM_ZERO;
      } else {
        s = roundScale((hi - lo) / INT4_MAX);
        z = s > 0 ? clampCode(roundHalfEven((0 - lo) / s)) : INT4_SYM_ZERO; // 0 - lo: never -0
        if (z < (opts.minZero ?? 0) && hi > 0) {
          z = opts.minZero!;
          s = roundScale(hi / (INT4_MAX - z));
        }
        zeros![n * numG + g] = z;
      }
      scales[n * numG + g] = s;
      if (s > 0) for (let i = k0; i < k0 + len; i++) words[i >>> 3]! |= clampCode(roundHalfEven(w[i]! / s) + z) << ((i & 7) * 4);
      else for (let i = k0; i < k0 + len; i++) words[i >>> 3]! |= z << ((i & 7) * 4);
    }
  }
  return { kind: 'int4', shape: [N, K], groupSize: G, qweight: words, scales, zeros, inputScale: null };
}

/** Rows n0..n1 of an int4 weight, dequantized into out [(n1 - n0), K]. */
export function dequantizeInt4Rows(
  qweight: Int32Array, scales: Float32Array, zeros: Float32Array | null, K: number, groupSize: number, n0: number, n1: number, out: Float32Array,
): void {
  const numG = numGroups(K, groupSize);
  const wordsPerRow = K / INT4_PER_WORD;
  for (let n = n0; n < n1; n++) {
    const dst = (n - n0) * K;
    for (let g = 0; g < numG; g++) {
      const s = scales[n * numG + g]!;
      const z = zeros ? zeros[n * numG + g]! : INT4_SYM_ZERO;
      const kEnd = Math.min(K, (g + 1) * groupSize);
      for (let k = g * groupSize; k < kEnd; k++) {
        const q = (qweight[n * wordsPerRow + (k >>> 3)]! >>> ((k & 7) * 4)) & 0xf;
        out[dst + k] = (q - z) * s;
      }
    }
  }
}

function clampCode(q: number): number {
  return q < 0 ? 0 : q > INT4_MAX ? INT4_MAX : q;
}

/** The smallest f16 value >= s (so no code overflows the range the f32 scale was chosen for). */
function f16Up(s: number, name: string): number {
  if (s === 0) return 0;
  if (!(s <= F16_MAX)) throw unsupportedQuant(`tensor '${name}': a group scale of ${s} does not fit an f16 scale`, { tensor: name });
  const h = f32ToF16(s);
  const v = f16ToF32(h);
  return v >= s ? v : f16ToF32(h + 1);
}
