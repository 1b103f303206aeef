/**
 * Rows of one paged KV cache tensor as the CPU ops see them: f32 rows ('auto'), or E4M3 codes
 * ('fp8', 4 to an i32 word) with the layer's per-tensor scale: written as code(f32(x / scale)),
 * read as E4M3(code) * scale.
 */
import type { LayerKvCache } from '../../backend.js';
import { E4M3_TO_F32, encodeE4M3 } from '../../../weights/quant/fp8.js';
import { f32Of, i32Of, internal, requireRows } from '../cpu-tensor.js';

export interface KvRows {
  readonly numSlots: number;
  /** the storage itself when rows are f32 ('auto'), else null */
  readonly f32: Float32Array | null;
  /** row `slot` = x [width] */
  write(slot: number, x: Float32Array): void;
  /** dst[offset .. offset + width) = row `slot`, dequantized */
  read(slot: number, dst: Float32Array, offset: number): void;
}

/** `which` ('k' or 'v') of `cache`, checked to hold rows of `width` elements. */
export function kvCacheRows(cache: LayerKvCache, which: 'k' | 'v', width: number, op: string): KvRows {
  const t = which === 'k' ? cache.k : cache.v;
  const name = `cache.${which}`;
  if ((cache.dtype ?? 'auto') === 'auto') {
    const data = f32Of(t, op, name);
    requireRows(t, data, 0, width, op, name);
    return {
      numSlots: width === 0 ? 0 : Math.floor(data.length / width),
      f32: data,
      write: (slot, x) => data.set(x, slot * width),
      read: (slot, dst, offset) => dst.set(data.subarray(slot * width, (slot + 1) * width), offset),
    };
  }
  if (cache.dtype !== 'fp8') throw internal(`${op}: unknown KV cache dtype '${String(cache.dtype)}'`, { dtype: cache.dtype });
  const words = i32Of(t, op, name);
  if (width % 4 !== 0) throw internal(`${op}: an fp8 KV cache needs rows of a multiple of 4 elements, got ${width}`, { width });
  requireRows(t, words, 0, width / 4, op, name);
  const bytes = new Uint8Array(words.buffer, words.byteOffset, words.byteLength);
  const scale = Math.fround((which === 'k' ? cache.kScale : cache.vScale) ?? 1);
  if (!(scale > 0 && Number.isFinite(scale))) throw internal(`${op}: ${which}Scale must be finite and positive, got ${scale}`, { scale });
  return {
    numSlots: width === 0 ? 0 : Math.floor(bytes.length / width),
    f32: null,
    write: (slot, x) => {
      const o = slot * width;
      for (let e = 0; e < width; e++) bytes[o + e] = encodeE4M3(x[e]! / scale);
    },
    read: (slot, dst, offset) => {
      const o = slot * width;
      for (let e = 0; e < width; e++) dst[offset + e] = E4M3_TO_F32[bytes[o + e]!]! * scale;
    },
  };
}
