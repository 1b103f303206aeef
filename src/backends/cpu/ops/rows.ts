/**
 * Row-wise data movement and elementwise ops: embedding, embeddingShard, gatherRows, copy, add, gatherTokenIds.
 */
import type { Tensor } from '../../backend.js';
import { f32Of, i32Of, internal, lastDim, requireCount, requireLength, requireRows } from '../cpu-tensor.js';

/** out [T, H] = table[ids[t]]; table [V, H]. */
export function embedding(out: Tensor, table: Tensor, ids: Tensor, numTokens: number): void {
  gather('embedding', out, table, ids, numTokens, 'table', 'ids');
}

/** out [T, H] = table[ids[t] - vocabStart] where that row is in table [V', H], else zeros (vocab-parallel lookup). */
export function embeddingShard(out: Tensor, table: Tensor, ids: Tensor, numTokens: number, vocabStart: number): void {
  const op = 'embeddingShard';
  requireCount(numTokens, op, 'numTokens');
  requireCount(vocabStart, op, 'vocabStart');
  const H = lastDim(table);
  const td = f32Of(table, op, 'table');
  const od = f32Of(out, op, 'out');
  const id = i32Of(ids, op, 'ids');
  requireRows(out, od, numTokens, H, op, 'out');
  requireLength(ids, id, numTokens, op, 'ids');
  const numRows = H === 0 ? 0 : Math.floor(td.length / H);
  for (let t = 0; t < numTokens; t++) {
    const row = id[t] - vocabStart;
    if (row >= 0 && row < numRows) od.set(td.subarray(row * H, row * H + H), t * H);
    else od.fill(0, t * H, t * H + H);
  }
}

/** out [R, H] = x[indices[r]]. */
export function gatherRows(out: Tensor, x: Tensor, indices: Tensor, numRows: number): void {
  gather('gatherRows', out, x, indices, numRows, 'x', 'indices');
}

function gather(op: string, out: Tensor, src: Tensor, index: Tensor, numRows: number, srcName: string, indexName: string): void {
  requireCount(numRows, op, 'numRows');
  const H = lastDim(src);
  const sd = f32Of(src, op, srcName);
  const od = f32Of(out, op, 'out');
  const id = i32Of(index, op, indexName);
  requireRows(out, od, numRows, H, op, 'out');
  requireLength(index, id, numRows, op, indexName);
  const numSrcRows = H === 0 ? 0 : Math.floor(sd.length / H);
  for (let r = 0; r < numRows; r++) {
    const row = id[r];
    if (row < 0 || row >= numSrcRows) {
      throw internal(`${op}: ${indexName}[${r}] = ${row} is outside ${srcName} rows 0..${numSrcRows - 1}`, { op, index: r, row, numSrcRows });
    }
    od.set(sd.subarray(row * H, row * H + H), r * H);
  }
}

/** out = x over the first numTokens rows. */
export function copy(out: Tensor, x: Tensor, numTokens: number): void {
  const op = 'copy';
  requireCount(numTokens, op, 'numTokens');
  const H = lastDim(x);
  const xd = f32Of(x, op, 'x');
  const od = f32Of(out, op, 'out');
  requireRows(x, xd, numTokens, H, op, 'x');
  requireRows(out, od, numTokens, H, op, 'out');
  od.set(xd.subarray(0, numTokens * H));
}

/** out = a + b over the first numTokens rows; out may alias a or b. */
export function add(out: Tensor, a: Tensor, b: Tensor, numTokens: number): void {
  const op = 'add';
  requireCount(numTokens, op, 'numTokens');
  const H = lastDim(out);
  const od = f32Of(out, op, 'out');
  const ad = f32Of(a, op, 'a');
  const bd = f32Of(b, op, 'b');
  requireRows(out, od, numTokens, H, op, 'out');
  requireRows(a, ad, numTokens, H, op, 'a');
  requireRows(b, bd, numTokens, H, op, 'b');
  const n = numTokens * H;
  for (let i = 0; i < n; i++) od[i] = ad[i] + bd[i];
}

/** tokenIds[t] = src[srcIndex[t]] where srcIndex[t] >= 0 (async scheduling's tokens still being sampled); all i32. */
export function gatherTokenIds(tokenIds: Tensor, src: Tensor, srcIndex: Tensor, numTokens: number): void {
  const op = 'gatherTokenIds';
  requireCount(numTokens, op, 'numTokens');
  const out = i32Of(tokenIds, op, 'tokenIds');
  const sd = i32Of(src, op, 'src');
  const idx = i32Of(srcIndex, op, 'srcIndex');
  requireLength(tokenIds, out, numTokens, op, 'tokenIds');
  requireLength(srcIndex, idx, numTokens, op, 'srcIndex');
  for (let t = 0; t < numTokens; t++) {
    const s = idx[t]!;
    if (s < 0) continue;
    if (s >= sd.length) throw internal(`${op}: srcIndex[${t}] = ${s} is outside src [0, ${sd.length})`, { op, index: t, srcIndex: s, srcLength: sd.length });
    out[t] = sd[s]!;
  }
}
