/**
 * FP8 E4M3 (OCP 8-bit floating point spec, "E4M3FN": bias 7, no infinities, NaN = S.1111.111).
 * Normals (1 + m/8) * 2^(e-7) up to 448 = 0x7E; subnormals m * 2^-9; 0x7F / 0xFF are NaN.
 * Encoding rounds to nearest even and saturates: |x| >= 448 and +-Inf give +-448, NaN gives NaN.
 * Spec: https://www.opencompute.org/documents/ocp-8-bit-floating-point-specification-ofp8-revision-1-0-2023-12-01-pdf-1
 */
import type { HostQuantWeight } from './types.js';
import { checkPackable, roundHalfEven, wordBytes } from './types.js';

export const FP8_E4M3_MAX = 448;
/** smallest dynamic per-token activation scale, as vLLM's (keeps an all-zero row finite) */
export const FP8_MIN_ACTIVATION_SCALE = 1 / (FP8_E4M3_MAX * 512);
const E4M3_NAN = 0x7f;
const E4M3_MAX_BITS = 0x7e;
/** f32 bit patterns of 448 and of 2^-6 (the smallest E4M3 normal) */
const F32_BITS_448 = 0x43e00000;
const F32_BITS_MIN_NORMAL = 0x3c800000;
const F32_EXP_INF = 0x7f800000;
/** f32 exponent bias 127 minus E4M3 bias 7, in E4M3's exponent field position */
const EXP_REBIAS = 120 << 3;
const SUBNORMAL_STEPS = 512; // 2^9: subnormals are multiples of 2^-9

function decodeBits(b: number): number {
  const sign = b & 0x80 ? -1 : 1;
  const e = (b >> 3) & 0xf;
  const m = b & 7;
  if (e === 15 && m === 7) return NaN;
  if (e === 0) return (sign * m) / SUBNORMAL_STEPS;
  return sign * (1 + m / 8) * 2 ** (e - 7);
}

/** E4M3 byte -> value, for every byte. */
export const E4M3_TO_F32: Float32Array = Float32Array.from({ length: 256 }, (_, b) => decodeBits(b));

export function decodeE4M3(bits: number): number {
  return E4M3_TO_F32[bits & 0xff]!;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** f32 -> E4M3 byte, round to nearest even, saturating to +-448. */
export function encodeE4M3(x: number): number {
  f32[0] = x;
  return encodeF32Bits(u32[0]!, Math.abs(f32[0]!));
}

/** `u` the f32 bits of x, `abs` = |x| as an f32 value. */
function encodeF32Bits(u: number, abs: number): number {
  const sign = (u >>> 24) & 0x80;
  const a = u & 0x7fffffff;
  if (a > F32_EXP_INF) return sign | E4M3_NAN;
  if (a >= F32_BITS_448) return sign | E4M3_MAX_BITS;
  if (a < F32_BITS_MIN_NORMAL) return sign | roundHalfEven(abs * SUBNORMAL_STEPS); // 8 lands on 0x08, the smallest normal
  // keep 3 of 23 mantissa bits, round half to even; a carry moves into the exponent
  const r = (a + 0x7ffff + ((a >>> 20) & 1)) >>> 20;
  return sign | (r - EXP_REBIAS);
}

/** dst[i] = encode(src[i] / scale) for a run of values (the quotient rounded to f32 first, as torch does). */
export function encodeE4M3Scaled(src: Float32Array, srcStart: number, count: number, scale: number, dst: Uint8Array, dstStart: number, scratch: Float32Array): void {
  const bits = new Uint32Array(scratch.buffer, scratch.byteOffset, scratch.length);
  for (let done = 0; done < count; done += scratch.length) {
    const n = Math.min(scratch.length, count - done);
    for (let i = 0; i < n; i++) scratch[i] = src[srcStart + done + i]! / scale;
    for (let i = 0; i < n; i++) dst[dstStart + done + i] = encodeF32Bits(bits[i]!, Math.abs(scratch[i]!));
  }
}

/** The scale that maps amax onto 448; 1 for an all-zero tensor (any scale encodes zeros exactly). */
export function fp8ScaleFor(amax: number): number {
  return amax > 0 && Number.isFinite(amax) ? amax / FP8_E4M3_MAX : 1;
}

export type Fp8ScaleMode = 'tensor' | 'channel';

/** f32 w [N, K] -> E4M3 with one scale per tensor or per output channel. */
export function quantizeFp8(w: Float32Array, N: number, K: number, mode: Fp8ScaleMode, name = 'weight'): HostQuantWeight {
  checkPackable('fp8', N, K, name);
  const bytes = new Uint8Array(N * K);
  const scratch = new Float32Array(Math.min(4096, Math.max(1, K)));
  let scales: Float32Array;
  if (mode === 'tensor') {
    const s = Math.fround(fp8ScaleFor(amaxOf(w, 0, N * K)));
    encodeE4M3Scaled(w, 0, N * K, s, bytes, 0, scratch);
    scales = Float32Array.of(s);
  } else {
    scales = new Float32Array(N);
    for (let n = 0; n < N; n++) {
      const s = Math.fround(fp8ScaleFor(amaxOf(w, n * K, K)));
      scales[n] = s;
      encodeE4M3Scaled(w, n * K, K, s, bytes, n * K, scratch);
    }
  }
  return { kind: 'fp8', shape: [N, K], groupSize: K, qweight: new Int32Array(bytes.buffer), scales, zeros: null, inputScale: null };
}

/** Rows n0..n1 of an fp8 weight, dequantized into out [(n1 - n0), K]. */
export function dequantizeFp8Rows(qweight: Int32Array, scales: Float32Array, K: number, n0: number, n1: number, out: Float32Array): void {
  const bytes = wordBytes(qweight);
  const perTensor = scales.length === 1;
  for (let n = n0; n < n1; n++) {
    const s = perTensor ? scales[0]! : scales[n]!;
    const src = n * K;
    const dst = (n - n0) * K;
    for (let k = 0; k < K; k++) out[dst + k] = E4M3_TO_F32[bytes[src + k]!]! * s;
  }
}

/**
 * The reference of FP8 activations: each of the first numTokens rows of x [T, K] is quantized to
 * E4M3 and back, with `inputScale` (static) or its own scale max(rowAmax / 448, FP8_MIN_ACTIVATION_SCALE)
 * (dynamic per token). Writes out [T, K]; returns the scale of each row.
 */
export function fakeQuantizeActivationsFp8(x: Float32Array, numTokens: number, K: number, inputScale: number | null, out: Float32Array): Float32Array {
  const rowScales = new Float32Array(numTokens);
  for (let t = 0; t < numTokens; t++) {
    const base = t * K;
    const s = inputScale ?? Math.max(Math.fround(amaxOf(x, base, K) / FP8_E4M3_MAX), FP8_MIN_ACTIVATION_SCALE);
    rowScales[t] = s;
    for (let k = 0; k < K; k++) out[base + k] = E4M3_TO_F32[encodeE4M3(x[base + k]! / s)]! * s;
  }
  return rowScales;
}

export function amaxOf(a: Float32Array, start: number, count: number): number {
  let m = 0;
  for (let i = start; i < start + count; i++) {
    const v = Math.abs(a[i]!);
    if (v > m) m = v;
  }
  return m;
}
