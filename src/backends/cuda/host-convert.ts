/**
 * Host-side dtype conversion for uploads and downloads. Bytes that are already in the
 * target dtype pass through untouched (no copy); others are converted element by element
 * straight into the target's bytes, never through a whole f32 copy.
 */
import { PeregrineError } from '../../errors.js';
import type { DType, StorageDType } from '../backend.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, storageBytesPerElement } from '../../weights/dtype.js';

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

let f16Table: Float32Array | null = null;
function f16ToF32Table(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16ToF32(h);
  }
  return f16Table;
}

/** A typed view of `bytes` when aligned; else an aligned copy's view. */
function aligned<T>(bytes: Uint8Array, width: number, make: (b: ArrayBuffer, off: number, n: number) => T): T {
  const b = bytes.byteOffset % width === 0 ? bytes : bytes.slice();
  return make(b.buffer as ArrayBuffer, b.byteOffset, b.byteLength / width);
}

function asU16(bytes: Uint8Array): Uint16Array {
  return aligned(bytes, 2, (b, o, n) => new Uint16Array(b, o, n));
}
function asF32(bytes: Uint8Array): Float32Array {
  return aligned(bytes, 4, (b, o, n) => new Float32Array(b, o, n));
}

/** f32 -> bf16 bits, round to nearest even (NaN stays NaN). */
export function f32ToBf16Array(src: Float32Array, dst: Uint16Array): void {
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < u.length; i++) {
    const x = u[i]!;
    dst[i] = (x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0 ? (x >>> 16) | 0x40 : ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
  }
}

/** Element `i` of `bytes` (a `src` array) as a JS number. */
function reader(src: StorageDType, bytes: Uint8Array): (i: number) => number {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (src) {
    case 'F32': return (i) => dv.getFloat32(i * 4, true);
    case 'F64': return (i) => dv.getFloat64(i * 8, true);
    case 'F16': { const t = f16ToF32Table(); return (i) => t[dv.getUint16(i * 2, true)]!; }
    case 'BF16': return (i) => bf16ToF32(dv.getUint16(i * 2, true));
    case 'I32': return (i) => dv.getInt32(i * 4, true);
    case 'I64': return (i) => Number(dv.getBigInt64(i * 8, true));
    case 'I8': return (i) => dv.getInt8(i);
    case 'U8': return (i) => dv.getUint8(i);
    default: throw new PeregrineError('PGN_ERR_WEIGHTS_DTYPE', `cannot upload ${src} data (no conversion to a compute dtype)`, { dtype: src });
  }
}

/** Little-endian bytes of `src` -> the bytes of `count` elements of `dtype`. */
export function convertStorage(src: StorageDType, bytes: Uint8Array, dtype: DType): Uint8Array {
  const width = storageBytesPerElement(src);
  if (bytes.byteLength % width !== 0) {
    throw new PeregrineError('PGN_ERR_WEIGHTS_SHAPE', `${bytes.byteLength} bytes is not a whole number of ${src} elements`, { dtype: src, byteLength: bytes.byteLength });
  }
  const n = bytes.byteLength / width;
  const same = (src === 'F32' && dtype === 'f32') || (src === 'BF16' && dtype === 'bf16') || (src === 'F16' && dtype === 'f16') || (src === 'I32' && dtype === 'i32');
  if (same && LITTLE_ENDIAN) return bytes;
  if (src === 'F32' && dtype === 'bf16' && LITTLE_ENDIAN) {
    const out = new Uint16Array(n);
    f32ToBf16Array(asF32(bytes), out);
    return new Uint8Array(out.buffer);
  }
  if (src === 'BF16' && dtype === 'f32' && LITTLE_ENDIAN) {
    const h = asU16(bytes);
    const out = new Uint32Array(n);
    for (let i = 0; i < n; i++) out[i] = h[i]! << 16;
    return new Uint8Array(out.buffer);
  }
  const get = reader(src, bytes);
  switch (dtype) {
    case 'f32': { const out = new Float32Array(n); for (let i = 0; i < n; i++) out[i] = get(i); return new Uint8Array(out.buffer); }
    case 'i32': { const out = new Int32Array(n); for (let i = 0; i < n; i++) out[i] = get(i); return new Uint8Array(out.buffer); }
    case 'f16': { const out = new Uint16Array(n); for (let i = 0; i < n; i++) out[i] = f32ToF16(get(i)); return new Uint8Array(out.buffer); }
    case 'bf16': { const out = new Uint16Array(n); for (let i = 0; i < n; i++) out[i] = f32ToBf16(get(i)); return new Uint8Array(out.buffer); }
  }
}

/** f32 values -> the bytes of `dtype`. */
export function encodeF32(data: Float32Array, dtype: DType): Uint8Array {
  switch (dtype) {
    case 'f32': return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    case 'bf16': { const out = new Uint16Array(data.length); f32ToBf16Array(data, out); return new Uint8Array(out.buffer); }
    case 'f16': { const out = new Uint16Array(data.length); for (let i = 0; i < data.length; i++) out[i] = f32ToF16(data[i]!); return new Uint8Array(out.buffer); }
    case 'i32': { const out = new Int32Array(data.length); for (let i = 0; i < data.length; i++) out[i] = data[i]!; return new Uint8Array(out.buffer); }
  }
}

/** Bytes of `dtype` (fresh, aligned) -> f32 values. */
export function decodeToF32(bytes: Uint8Array, dtype: DType): Float32Array {
  switch (dtype) {
    case 'f32': return asF32(bytes);
    case 'i32': return Float32Array.from(aligned(bytes, 4, (b, o, n) => new Int32Array(b, o, n)));
    case 'bf16': {
      const h = asU16(bytes);
      const u = new Uint32Array(h.length);
      for (let i = 0; i < h.length; i++) u[i] = h[i]! << 16;
      return new Float32Array(u.buffer);
    }
    case 'f16': {
      const h = asU16(bytes);
      const t = f16ToF32Table();
      const out = new Float32Array(h.length);
      for (let i = 0; i < h.length; i++) out[i] = t[h[i]!]!;
      return out;
    }
  }
}
