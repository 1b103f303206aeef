/**
 * Load-time reshaping of checkpoint tensors (WeightTransform in spec.ts), done on raw
 * little-endian bytes: an element is moved whole, whatever its dtype, so the result feeds
 * `backend.fromBytes` (CPU conversion or a direct CUDA upload) unchanged.
 */
import { PeregrineError } from '../errors.js';
import { storageBytesPerElement } from '../weights/dtype.js';
import type { RawTensor } from '../weights/safetensors.js';
import type { WeightTransform } from './spec.js';

export function applyWeightTransforms(t: RawTensor, transforms: readonly WeightTransform[]): RawTensor {
  return transforms.reduce(applyOne, t);
}

function applyOne(t: RawTensor, tr: WeightTransform): RawTensor {
  switch (tr.kind) {
    case 'transpose':
      return transpose(t);
    case 'permuteBlocks':
      return permuteBlocks(t, tr.blockRows, tr.order);
    case 'sliceRows':
      return sliceRows(t, tr.start);
    case 'reshape': {
      const numel = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
      if (numel(tr.shape) !== numel(t.shape)) throw shapeError(t, `cannot be viewed as [${tr.shape.join(', ')}]`);
      return { ...t, shape: [...tr.shape] };
    }
  }
}

/** [a, b] -> [b, a] */
function transpose(t: RawTensor): RawTensor {
  if (t.shape.length !== 2) throw shapeError(t, 'must be 2-D to transpose');
  const [a, b] = t.shape as [number, number];
  const e = storageBytesPerElement(t.dtype);
  const out = new Uint8Array(t.bytes.length);
  for (let i = 0; i < a; i++) {
    for (let j = 0; j < b; j++) {
      const src = (i * b + j) * e;
      out.set(t.bytes.subarray(src, src + e), (j * a + i) * e);
    }
  }
  return { ...t, shape: [b, a], bytes: out };
}

/** dim 0 as order.length blocks of blockRows rows; output block k = input block order[k] */
function permuteBlocks(t: RawTensor, blockRows: number, order: readonly number[]): RawTensor {
  const rows = t.shape[0] ?? 0;
  if (blockRows * order.length !== rows || [...order].sort((x, y) => x - y).some((v, k) => v !== k)) {
    throw shapeError(t, `cannot be split into ${order.length} blocks of ${blockRows} rows in order [${order.join(', ')}]`);
  }
  const blockBytes = t.bytes.length / order.length;
  const out = new Uint8Array(t.bytes.length);
  order.forEach((src, k) => out.set(t.bytes.subarray(src * blockBytes, (src + 1) * blockBytes), k * blockBytes));
  return { ...t, bytes: out };
}

function sliceRows(t: RawTensor, start: number): RawTensor {
  const rows = t.shape[0] ?? 0;
  if (!(start >= 0 && start < rows)) throw shapeError(t, `has no rows after row ${start}`);
  const rowBytes = t.bytes.length / rows;
  return { ...t, shape: [rows - start, ...t.shape.slice(1)], bytes: t.bytes.slice(start * rowBytes) };
}

/**
 * Ranges of one dim to keep, concatenated in order: a rank's shard of a weight under tensor
 * parallelism (rows of dim 0, columns of the last dim, the expert rows of dim 1 of [E, 2I, H]).
 */
export interface TensorSlice {
  readonly dim: number;
  /** [start, end) indices of `dim` */
  readonly ranges: readonly (readonly [number, number])[];
}

/** Keeps `s.ranges` of dim `s.dim`: the bytes seen as [outer, dimSize, inner], blocks of inner elements copied whole. */
export function sliceTensor(t: RawTensor, s: TensorSlice): RawTensor {
  const size = t.shape[s.dim];
  if (!Number.isInteger(s.dim) || size === undefined) throw shapeError(t, `has no dim ${s.dim} to slice`);
  for (const [a, b] of s.ranges) {
    if (!(Number.isInteger(a) && Number.isInteger(b) && a >= 0 && a < b && b <= size)) throw shapeError(t, `has ${size} entries in dim ${s.dim}, cannot take [${a}, ${b})`);
  }
  const product = (dims: readonly number[]) => dims.reduce((x, y) => x * y, 1);
  const outer = product(t.shape.slice(0, s.dim));
  const innerBytes = product(t.shape.slice(s.dim + 1)) * storageBytesPerElement(t.dtype);
  const kept = s.ranges.reduce((n, [a, b]) => n + b - a, 0);
  const out = new Uint8Array(outer * kept * innerBytes);
  let o = 0;
  for (let i = 0; i < outer; i++) {
    const base = i * size * innerBytes;
    for (const [a, b] of s.ranges) {
      out.set(t.bytes.subarray(base + a * innerBytes, base + b * innerBytes), o);
      o += (b - a) * innerBytes;
    }
  }
  const shape = [...t.shape];
  shape[s.dim] = kept;
  return { ...t, shape, bytes: out };
}

function shapeError(t: RawTensor, what: string): PeregrineError {
  return new PeregrineError('PGN_ERR_WEIGHTS_SHAPE', `tensor '${t.name}' [${t.shape.join(', ')}] ${what}`, { tensor: t.name, shape: t.shape });
}

/**
 * Block order turning per-head fused QKV rows ([numKvHeads, group + 2, headDim]: each kv head's
 * `group` query heads, then its k, then its v) into q | k | v. group = 1 is NeoX / BLOOM /
 * Falcon-RW's [numHeads, 3, headDim]; Falcon's new decoder architecture groups.
 */
export function groupedQkvOrder(numKvHeads: number, group: number): number[] {
  const per = group + 2;
  const order: number[] = [];
  for (let h = 0; h < numKvHeads; h++) for (let g = 0; g < group; g++) order.push(h * per + g);
  for (let h = 0; h < numKvHeads; h++) order.push(h * per + group);
  for (let h = 0; h < numKvHeads; h++) order.push(h * per + group + 1);
  return order;
}
