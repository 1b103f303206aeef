/**
 * ropeWriteKv: rotate q (in place) and k, and write k and v into the paged cache.
 *
 * qkv row layout: [q (numHeads * headDim) | k (numKvHeads * headDim) | v (numKvHeads * headDim)].
 * Only the first rotaryDim dims of each head rotate (partial rotary); the rest pass through.
 * cosSin row p: [cos_0 .. cos_{r/2-1}, sin_0 .. sin_{r/2-1}]; pair j uses cos_j / sin_j:
 *   neox (HF rotate_half): dims (j, j + r/2);  gptj: dims (2j, 2j + 1).
 * k and v inside qkv are left untouched: the rotated k only goes to the cache.
 * An fp8 cache (LayerKvCache.dtype) stores E4M3 codes of f32(x / scale), rounded to nearest even
 * and saturated at +-448, as the CUDA kernel does.
 */
import type { LayerKvCache, RopeParams, Tensor } from '../../backend.js';
import { f32Of, i32Of, internal, requireCount, requireLength, requireRows } from '../cpu-tensor.js';
import { kvCacheRows } from './kv-cache-rows.js';

const OP = 'ropeWriteKv';

export function ropeWriteKv(qkv: Tensor, positions: Tensor, cosSin: Tensor | null, cache: LayerKvCache, slotMapping: Tensor, numTokens: number, p: RopeParams): void {
  requireCount(numTokens, OP, 'numTokens');
  const { numHeads, numKvHeads, headDim, rotaryDim, style } = p;
  const qWidth = numHeads * headDim;
  const kvWidth = numKvHeads * headDim;
  const rowWidth = qWidth + 2 * kvWidth;
  const qkvd = f32Of(qkv, OP, 'qkv');
  requireRows(qkv, qkvd, numTokens, rowWidth, OP, 'qkv');
  const kRows = kvCacheRows(cache, 'k', kvWidth, OP);
  const vRows = kvCacheRows(cache, 'v', kvWidth, OP);
  const numSlots = Math.min(kRows.numSlots, vRows.numSlots);
  const kRow = new Float32Array(kvWidth);
  const slots = i32Of(slotMapping, OP, 'slotMapping');
  requireLength(slotMapping, slots, numTokens, OP, 'slotMapping');

  let table: Float32Array | null = null;
  let pos: Int32Array | null = null;
  let numPositions = 0;
  if (cosSin) {
    if (rotaryDim <= 0 || rotaryDim % 2 !== 0 || rotaryDim > headDim) {
      throw internal(`${OP}: rotaryDim ${rotaryDim} must be even and in 2..headDim (${headDim})`, { rotaryDim, headDim });
    }
    if (style !== 'neox' && style !== 'gptj') throw internal(`${OP}: unknown rope style '${String(style)}'`, { style });
    table = f32Of(cosSin, OP, 'cosSin');
    requireRows(cosSin, table, 0, rotaryDim, OP, 'cosSin');
    numPositions = Math.floor(table.length / rotaryDim);
    pos = i32Of(positions, OP, 'positions');
    requireLength(positions, pos, numTokens, OP, 'positions');
  }
  const rotate = style === 'gptj' ? rotateGptj : rotateNeox;

  for (let t = 0; t < numTokens; t++) {
    const row = t * rowWidth;
    let cs = -1;
    if (table && pos) {
      const position = pos[t];
      if (position < 0 || position >= numPositions) {
        throw internal(`${OP}: positions[${t}] = ${position} is outside the cos/sin table (${numPositions} positions)`, { token: t, position, numPositions });
      }
      cs = position * rotaryDim;
      for (let h = 0; h < numHeads; h++) rotate(qkvd, row + h * headDim, table, cs, rotaryDim);
    }
    const slot = slots[t];
    if (slot < 0) continue;
    if (slot >= numSlots) throw internal(`${OP}: slotMapping[${t}] = ${slot} is outside the cache (${numSlots} slots)`, { token: t, slot, numSlots });
    const kSrc = row + qWidth;
    kRow.set(qkvd.subarray(kSrc, kSrc + kvWidth));
    if (table) {
      for (let h = 0; h < numKvHeads; h++) rotate(kRow, h * headDim, table, cs, rotaryDim);
    }
    kRows.write(slot, kRow);
    vRows.write(slot, qkvd.subarray(kSrc + kvWidth, kSrc + 2 * kvWidth));
  }
}

/** Rotates the pairs (o + j, o + j + r/2) of x in place by angle j (cos/sin at cs[c + j], cs[c + r/2 + j]). */
function rotateNeox(x: Float32Array, o: number, cs: Float32Array, c: number, rotaryDim: number): void {
  const half = rotaryDim / 2;
  for (let j = 0; j < half; j++) {
    const cos = cs[c + j], sin = cs[c + half + j];
    const x1 = x[o + j], x2 = x[o + j + half];
    x[o + j] = x1 * cos - x2 * sin;
    x[o + j + half] = x2 * cos + x1 * sin;
  }
}

/** Rotates the pairs (o + 2j, o + 2j + 1) of x in place by angle j. */
function rotateGptj(x: Float32Array, o: number, cs: Float32Array, c: number, rotaryDim: number): void {
  const half = rotaryDim / 2;
  for (let j = 0; j < half; j++) {
    const cos = cs[c + j], sin = cs[c + half + j];
    const x1 = x[o + 2 * j], x2 = x[o + 2 * j + 1];
    x[o + 2 * j] = x1 * cos - x2 * sin;
    x[o + 2 * j + 1] = x2 * cos + x1 * sin;
  }
}
