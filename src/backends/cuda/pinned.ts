/**
 * Page-locked (pinned) host memory: the one kind of host memory a device-to-host copy can
 * land in without blocking the host, so a step's sampled ids come back while the next step
 * is being scheduled. The bytes are read in place (koffi.view), once an event recorded
 * after the copy has completed.
 */
import koffi from 'koffi';
import { PeregrineError } from '../../errors.js';
import { check, type Driver } from './driver.js';
import { asCuda } from './cuda-tensor.js';
import type { Tensor } from '../backend.js';
import type { CudaStream } from './stream.js';

export class PinnedBuffer {
  readonly byteLength: number;
  readonly #drv: Driver;
  #ptr: unknown;
  #bytes: ArrayBuffer | null;

  /** cuMemHostAlloc of `byteLength` bytes (at least 1). */
  constructor(drv: Driver, byteLength: number) {
    if (!Number.isInteger(byteLength) || byteLength < 1) {
      throw new PeregrineError('PGN_ERR_INTERNAL', `pinned buffer: byteLength must be a positive integer, got ${byteLength}`, { byteLength });
    }
    this.#drv = drv;
    this.byteLength = byteLength;
    const box: unknown[] = [null];
    check(drv, drv.cuMemHostAlloc(box, byteLength, 0), `cuMemHostAlloc(${byteLength} bytes)`);
    this.#ptr = box[0];
    this.#bytes = koffi.view(this.#ptr, byteLength);
  }

  /** The memory itself (not a copy); throws once freed. */
  get bytes(): ArrayBuffer {
    if (this.#bytes === null) throw new PeregrineError('PGN_ERR_INTERNAL', 'pinned buffer used after free()');
    return this.#bytes;
  }

  /**
   * Queues a copy of the first `byteLength` bytes of `src` into this buffer on `stream`; read
   * them only once an event recorded after it has completed.
   */
  copyFromAsync(src: Tensor, byteLength: number, stream: CudaStream): void {
    const t = asCuda(src, 'copyFromAsync', 'src');
    if (byteLength > t.sizeBytes || byteLength > this.byteLength) {
      throw new PeregrineError('PGN_ERR_INTERNAL', `pinned copy of ${byteLength} bytes: the tensor holds ${t.sizeBytes}, the buffer ${this.byteLength}`, { byteLength });
    }
    if (this.#bytes === null) throw new PeregrineError('PGN_ERR_INTERNAL', 'pinned buffer used after free()');
    if (byteLength === 0) return;
    check(this.#drv, this.#drv.cuMemcpyDtoHAsync(this.#ptr, t.ptr, byteLength, stream.handle), 'cuMemcpyDtoHAsync (pinned)');
  }

  /** Frees the memory (no copy into it may be pending: synchronize first). */
  free(): void {
    if (this.#bytes === null) return;
    this.#bytes = null;
    check(this.#drv, this.#drv.cuMemFreeHost(this.#ptr), 'cuMemFreeHost');
    this.#ptr = null;
  }
}
