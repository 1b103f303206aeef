/**
 * CUDA tensors: a shape, a dtype and a device address. A view shares its base's memory
 * and owns none; freeing a view does nothing, using any tensor after its base was freed
 * is an error.
 */
import { PeregrineError } from '../../errors.js';
import { bytesPerElement, numel, type DType, type Tensor } from '../backend.js';
import type { DevicePtr } from './driver.js';

export class CudaTensor implements Tensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly numel: number;
  readonly sizeBytes: number;
  /** the tensor that owns the memory (this one unless a view) */
  readonly base: CudaTensor;
  readonly #ptr: DevicePtr;
  #freed = false;

  constructor(shape: readonly number[], dtype: DType, ptr: DevicePtr, base: CudaTensor | null = null) {
    this.shape = Object.freeze([...shape]);
    this.dtype = dtype;
    this.numel = numel(shape);
    this.sizeBytes = this.numel * bytesPerElement(dtype);
    this.#ptr = ptr;
    this.base = base ?? this;
  }

  get isView(): boolean {
    return this.base !== this;
  }

  get freed(): boolean {
    return this.base.#freed;
  }

  /** The device address; throws once the memory was freed. */
  get ptr(): DevicePtr {
    if (this.base.#freed) throw new PeregrineError('PGN_ERR_INTERNAL', `CUDA tensor [${this.shape.join(', ')}] ${this.dtype} was used after free()`, { shape: this.shape });
    return this.#ptr;
  }

  /** Marks the memory freed and returns its address (for the allocator); null for views and double frees. */
  release(): DevicePtr | null {
    if (this.isView || this.#freed) return null;
    this.#freed = true;
    return this.#ptr;
  }
}

export function asCuda(t: Tensor, op: string, name: string): CudaTensor {
  if (!(t instanceof CudaTensor)) throw new PeregrineError('PGN_ERR_INTERNAL', `${op}: ${name} is not a CUDA tensor`, { op, name });
  return t;
}
