/** Cheap argument checks the CUDA ops run before queuing a kernel (no element is read). */
import { PeregrineError } from '../../errors.js';
import { bytesPerElement, type DType, type Tensor } from '../backend.js';
import { asCuda, type CudaTensor } from './cuda-tensor.js';

export function invalid(op: string, message: string, details: Record<string, unknown> = {}): PeregrineError {
  return new PeregrineError('PGN_ERR_INTERNAL', `${op}: ${message}`, { op, ...details });
}

export function lastDim(t: Tensor): number {
  return t.shape.length === 0 ? 1 : t.shape[t.shape.length - 1]!;
}

export function requireCount(n: number, op: string, name: string): void {
  if (!Number.isInteger(n) || n < 0) throw invalid(op, `${name} must be a non-negative integer, got ${n}`, { name, value: n });
}

/** `t` as a CUDA tensor of a float dtype (optionally one of `dtypes`). */
export function floatTensor(t: Tensor, op: string, name: string, dtypes: readonly DType[] = ['f32', 'bf16', 'f16']): CudaTensor {
  const c = asCuda(t, op, name);
  if (!dtypes.includes(c.dtype)) throw invalid(op, `${name} must be ${dtypes.join(' or ')}, got ${c.dtype}`, { name, dtype: c.dtype });
  return c;
}

export function i32Tensor(t: Tensor, op: string, name: string, count: number): CudaTensor {
  const c = asCuda(t, op, name);
  if (c.dtype !== 'i32') throw invalid(op, `${name} must be i32, got ${c.dtype}`, { name, dtype: c.dtype });
  if (c.numel < count) throw invalid(op, `${name} [${c.shape.join(', ')}] holds ${c.numel} elements, needs ${count}`, { name, count });
  return c;
}

export function sameDtype(op: string, ref: CudaTensor, ...others: [CudaTensor | null, string][]): void {
  for (const [t, name] of others) {
    if (t && t.dtype !== ref.dtype) throw invalid(op, `${name} is ${t.dtype} but the op runs in ${ref.dtype}`, { name, dtype: t.dtype, expected: ref.dtype });
  }
}

/** `t` has rows of `width` (its last dim) and at least `numRows` of them. */
export function requireRows(t: CudaTensor, numRows: number, width: number, op: string, name: string): void {
  if (lastDim(t) !== width) throw invalid(op, `${name} has rows of ${lastDim(t)} elements, expected ${width} (shape [${t.shape.join(', ')}])`, { name, shape: t.shape, width });
  if (t.numel < numRows * width) throw invalid(op, `${name} [${t.shape.join(', ')}] holds fewer than ${numRows} rows of ${width}`, { name, shape: t.shape, numRows, width });
}

export function requireLength(t: CudaTensor, count: number, op: string, name: string): void {
  if (t.numel < count) throw invalid(op, `${name} [${t.shape.join(', ')}] holds ${t.numel} elements, needs ${count}`, { name, count });
}

/** 1 when every tensor's address is 16-byte aligned and `width` fills whole 16-byte packs. */
export function vecFlag(dtype: DType, width: number, ...tensors: (CudaTensor | null)[]): number {
  if (width % (16 / bytesPerElement(dtype)) !== 0) return 0;
  return tensors.every((t) => t === null || t.ptr % 16 === 0) ? 1 : 0;
}
