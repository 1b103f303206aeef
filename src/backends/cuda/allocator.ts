/**
 * Caching device allocator over cuMemAlloc. Sizes are rounded (512 B below 1 MiB, 2 MiB
 * above) and freed blocks wait in per-size free lists for the next request of that size,
 * so a forward pass that frees and allocates the same shapes never calls the driver.
 * All work runs on one stream, so a block freed and handed out again is only touched
 * after the work queued before it. When the driver runs out, the cache is returned to it
 * and the allocation retried once; then PGN_ERR_OUT_OF_MEMORY.
 */
import { PeregrineError } from '../../errors.js';
import { check, CUDA_ERROR_OUT_OF_MEMORY, cudaError, type DevicePtr, type Driver } from './driver.js';

const SMALL_LIMIT = 1 << 20;
const SMALL_ROUND = 512;
const LARGE_ROUND = 2 << 20;

export interface AllocatorStats {
  /** bytes handed out and not yet freed (rounded sizes) */
  readonly allocatedBytes: number;
  /** bytes held from the driver: allocated + cached */
  readonly reservedBytes: number;
  readonly cachedBytes: number;
  readonly peakAllocatedBytes: number;
  readonly peakReservedBytes: number;
  readonly numAllocs: number;
  readonly numCacheHits: number;
  readonly numDriverAllocs: number;
  readonly numDriverFrees: number;
}

export function roundAllocSize(bytes: number): number {
  const n = Math.max(bytes, 1);
  return n <= SMALL_LIMIT ? Math.ceil(n / SMALL_ROUND) * SMALL_ROUND : Math.ceil(n / LARGE_ROUND) * LARGE_ROUND;
}

export class CachingAllocator {
  readonly #drv: Driver;
  readonly #freeLists = new Map<number, DevicePtr[]>();
  readonly #live = new Map<DevicePtr, number>();
  #allocated = 0;
  #reserved = 0;
  #peakAllocated = 0;
  #peakReserved = 0;
  #numAllocs = 0;
  #numCacheHits = 0;
  #numDriverAllocs = 0;
  #numDriverFrees = 0;

  constructor(drv: Driver) {
    this.#drv = drv;
  }

  /** A device block of at least `bytes` (256-byte aligned at least). */
  alloc(bytes: number): DevicePtr {
    if (!Number.isFinite(bytes) || bytes < 0) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `cannot allocate ${bytes} bytes`, { bytes });
    const size = roundAllocSize(bytes);
    this.#numAllocs++;
    let ptr = this.#freeLists.get(size)?.pop();
    if (ptr !== undefined) this.#numCacheHits++;
    else ptr = this.#driverAlloc(size);
    this.#live.set(ptr, size);
    this.#allocated += size;
    this.#peakAllocated = Math.max(this.#peakAllocated, this.#allocated);
    return ptr;
  }

  free(ptr: DevicePtr): void {
    const size = this.#live.get(ptr);
    if (size === undefined) throw new PeregrineError('PGN_ERR_INTERNAL', `free of device pointer 0x${ptr.toString(16)} that this allocator does not hold (double free?)`, { ptr });
    this.#live.delete(ptr);
    this.#allocated -= size;
    let list = this.#freeLists.get(size);
    if (!list) this.#freeLists.set(size, (list = []));
    list.push(ptr);
  }

  /** Returns every cached (free) block to the driver. */
  emptyCache(): void {
    for (const [size, list] of this.#freeLists) {
      for (const ptr of list) {
        check(this.#drv, this.#drv.cuMemFree(ptr), 'cuMemFree');
        this.#reserved -= size;
        this.#numDriverFrees++;
      }
    }
    this.#freeLists.clear();
  }

  stats(): AllocatorStats {
    return {
      allocatedBytes: this.#allocated,
      reservedBytes: this.#reserved,
      cachedBytes: this.#reserved - this.#allocated,
      peakAllocatedBytes: this.#peakAllocated,
      peakReservedBytes: this.#peakReserved,
      numAllocs: this.#numAllocs,
      numCacheHits: this.#numCacheHits,
      numDriverAllocs: this.#numDriverAllocs,
      numDriverFrees: this.#numDriverFrees,
    };
  }

  /** Frees everything, live blocks included (the backend is going away). */
  dispose(): void {
    for (const ptr of [...this.#live.keys()]) this.free(ptr);
    this.emptyCache();
  }

  #driverAlloc(size: number): DevicePtr {
    const box: (number | bigint)[] = [0];
    let rc = this.#drv.cuMemAlloc(box, size);
    if (rc === CUDA_ERROR_OUT_OF_MEMORY) {
      this.emptyCache();
      rc = this.#drv.cuMemAlloc(box, size);
    }
    if (rc === CUDA_ERROR_OUT_OF_MEMORY) {
      const e = cudaError(this.#drv, rc, `cuMemAlloc(${size} bytes)`, 'PGN_ERR_OUT_OF_MEMORY');
      Object.assign(e.details, { requestedBytes: size, allocatedBytes: this.#allocated, reservedBytes: this.#reserved });
      e.message = `out of GPU memory allocating ${formatBytes(size)} (${formatBytes(this.#allocated)} in use by Peregrine): ${e.message}`;
      throw e;
    }
    check(this.#drv, rc, `cuMemAlloc(${size} bytes)`);
    this.#numDriverAllocs++;
    this.#reserved += size;
    this.#peakReserved = Math.max(this.#peakReserved, this.#reserved);
    return Number(box[0]);
  }
}

export function formatBytes(n: number): string {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(2)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  return `${n} B`;
}
