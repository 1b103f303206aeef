/** Conversions between safetensors storage dtypes and f32 (little-endian). */
import { PeregrineError } from '../errors.js';
import type { StorageDType } from '../backends/backend.js';

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** Every dtype a safetensors header may name that Peregrine knows (others are rejected). */
export const STORAGE_DTYPES: readonly StorageDType[] = ['F32', 'F16', 'BF16', 'F64', 'I64', 'I32', 'I8', 'U8', 'F8_E4M3', 'F8_E5M2'];

/** dtypes `toFloat32` decodes; the rest (FP8, I64) are handed on as raw bytes. */
const F32_CONVERTIBLE: ReadonlySet<StorageDType> = new Set(['F32', 'F16', 'BF16', 'F64', 'I32', 'I8', 'U8']);

export function isStorageDType(s: unknown): s is StorageDType {
  return typeof s === 'string' && (STORAGE_DTYPES as readonly string[]).includes(s);
}

export function canConvertToF32(dtype: StorageDType): boolean {
  return F32_CONVERTIBLE.has(dtype);
}

// Typed-array views read in host order; safetensors data is little-endian.
const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
let f16Table: Float32Array | undefined;

export function storageBytesPerElement(dtype: StorageDType): number {
  switch (dtype) {
    case 'F64': case 'I64': return 8;
    case 'F32': case 'I32': return 4;
    case 'F16': case 'BF16': return 2;
    case 'I8': case 'U8': case 'F8_E4M3': case 'F8_E5M2': return 1;
  }
}

export function bf16ToF32(bits: number): number {
  u32Scratch[0] = bits << 16;
  return f32Scratch[0]!;
}

/** Round-to-nearest-even f32 -> bf16 bits (NaN stays NaN). */
export function f32ToBf16(x: number): number {
  f32Scratch[0] = x;
  const u = u32Scratch[0]!;
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x007fffff) !== 0) return (u >>> 16) | 0x40;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

export function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Round-to-nearest-even f32 -> f16 bits. */
export function f32ToF16(x: number): number {
  f32Scratch[0] = x;
  const u = u32Scratch[0]!;
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && (half & 1))) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1))) half++;
  return sign | half;
}

/** Decode raw little-endian bytes of `dtype` into f32. */
export function toFloat32(dtype: StorageDType, bytes: Uint8Array): Float32Array {
  const n = bytes.byteLength / storageBytesPerElement(dtype);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(n);
  if (HOST_IS_LITTLE_ENDIAN && toFloat32Fast(dtype, bytes, out)) return out;
  switch (dtype) {
    case 'F32':
      for (let i = 0; i < n; i++) out[i] = dv.getFloat32(i * 4, true);
      return out;
    case 'F64':
      for (let i = 0; i < n; i++) out[i] = dv.getFloat64(i * 8, true);
      return out;
    case 'BF16':
      for (let i = 0; i < n; i++) out[i] = bf16ToF32(dv.getUint16(i * 2, true));
      return out;
    case 'F16':
      for (let i = 0; i < n; i++) out[i] = f16ToF32(dv.getUint16(i * 2, true));
      return out;
    case 'I32':
      for (let i = 0; i < n; i++) out[i] = dv.getInt32(i * 4, true);
      return out;
    case 'I8':
      for (let i = 0; i < n; i++) out[i] = dv.getInt8(i);
      return out;
    case 'U8':
      for (let i = 0; i < n; i++) out[i] = dv.getUint8(i);
      return out;
    default:
      throw new PeregrineError('PGN_ERR_WEIGHTS_DTYPE', `cannot convert ${dtype} to f32 here`, { dtype });
  }
}

/** Typed-array fast path for aligned input on little-endian hosts; false if it does not apply. */
function toFloat32Fast(dtype: StorageDType, bytes: Uint8Array, out: Float32Array): boolean {
  const n = out.length;
  switch (dtype) {
    case 'F32':
      if (bytes.byteOffset % 4 !== 0) return false;
      out.set(new Float32Array(bytes.buffer, bytes.byteOffset, n));
      return true;
    case 'BF16': {
      if (bytes.byteOffset % 2 !== 0) return false;
      const src = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
      const dst = new Uint32Array(out.buffer, out.byteOffset, n);
      for (let i = 0; i < n; i++) dst[i] = src[i]! << 16;
      return true;
    }
    case 'F16': {
      if (bytes.byteOffset % 2 !== 0) return false;
      const src = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
      const table = (f16Table ??= buildF16Table());
      for (let i = 0; i < n; i++) out[i] = table[src[i]!]!;
      return true;
    }
    default:
      return false;
  }
}

function buildF16Table(): Float32Array {
  const table = new Float32Array(1 << 16);
  for (let h = 0; h < table.length; h++) table[h] = f16ToF32(h);
  return table;
}
