/**
 * CPU tensors: a shape, a dtype and a typed array. Every float dtype is stored as f32
 * (the CPU reference computes in f32); i32 as Int32Array. Views share storage.
 *
 * The checks here are the cheap ones every op runs on its arguments (right class,
 * right dtype, enough rows); none of them walks the elements.
 */
import { PeregrineError } from '../../errors.js';
import { numel, type DType, type Tensor } from '../backend.js';

export type CpuStorage = Float32Array | Int32Array;

export class CpuTensor implements Tensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
  #data: CpuStorage | null;

  constructor(shape: readonly number[], data: CpuStorage) {
    this.shape = Object.freeze([...shape]);
    this.dtype = data instanceof Int32Array ? 'i32' : 'f32';
    this.#data = data;
  }

  get data(): CpuStorage {
    if (this.#data === null) throw internal(`tensor [${this.shape.join(', ')}] was used after free()`);
    return this.#data;
  }

  get freed(): boolean {
    return this.#data === null;
  }

  release(): void {
    this.#data = null;
  }
}

/** The storage of a CPU tensor (for tests and host-side helpers). */
export function cpuData(t: Tensor): Float32Array | Int32Array {
  return asCpu(t, 'cpuData', 'tensor').data;
}

export function internal(message: string, details: Record<string, unknown> = {}): PeregrineError {
  return new PeregrineError('PGN_ERR_INTERNAL', message, details);
}

export function asCpu(t: Tensor, op: string, name: string): CpuTensor {
  if (!(t instanceof CpuTensor)) throw internal(`${op}: ${name} is not a CPU tensor`, { op, name });
  return t;
}

export function f32Of(t: Tensor, op: string, name: string): Float32Array {
  const data = asCpu(t, op, name).data;
  if (!(data instanceof Float32Array)) throw internal(`${op}: ${name} must be a float tensor, got ${t.dtype}`, { op, name, dtype: t.dtype });
  return data;
}

export function i32Of(t: Tensor, op: string, name: string): Int32Array {
  const data = asCpu(t, op, name).data;
  if (!(data instanceof Int32Array)) throw internal(`${op}: ${name} must be an i32 tensor, got ${t.dtype}`, { op, name, dtype: t.dtype });
  return data;
}

export function lastDim(t: Tensor): number {
  return t.shape.length === 0 ? 1 : t.shape[t.shape.length - 1]!;
}

/** Checks that `t` has rows of `width` (its last dim) and at least `numRows` of them. */
export function requireRows(t: Tensor, data: CpuStorage, numRows: number, width: number, op: string, name: string): void {
  if (lastDim(t) !== width) {
    throw internal(`${op}: ${name} has rows of ${lastDim(t)} elements, expected ${width} (shape [${t.shape.join(', ')}])`, { op, name, shape: t.shape, width });
  }
  if (data.length < numRows * width) {
    throw internal(`${op}: ${name} [${t.shape.join(', ')}] holds fewer than ${numRows} rows of ${width}`, { op, name, shape: t.shape, numRows, width });
  }
}

/** Checks that `t` holds at least `count` elements. */
export function requireLength(t: Tensor, data: CpuStorage, count: number, op: string, name: string): void {
  if (data.length < count) {
    throw internal(`${op}: ${name} [${t.shape.join(', ')}] holds ${data.length} elements, needs ${count}`, { op, name, shape: t.shape, count });
  }
}

export function requireCount(n: number, op: string, name: string): void {
  if (!Number.isInteger(n) || n < 0) throw internal(`${op}: ${name} must be a non-negative integer, got ${n}`, { op, name, value: n });
}

export function checkShape(shape: readonly number[], op: string): number {
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw internal(`${op}: invalid shape [${shape.join(', ')}]`, { op, shape });
  }
  return numel(shape);
}
