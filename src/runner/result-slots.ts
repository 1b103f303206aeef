/**
 * Async scheduling's downloads: a launched step's sampled ids (and logprobs) are copied into
 * page-locked host memory without blocking the host, and read once the step's end event has
 * completed. Two slots used in turn: one step's results land in one while the other's are read.
 */
import type { Backend, Tensor } from '../backends/backend.js';
import type { SampleResult } from '../sampling/sampler.js';
import { PeregrineError } from '../errors.js';

/** Page-locked host memory (CudaBackend.allocPinned). */
export interface PinnedMemory {
  readonly bytes: ArrayBuffer;
  copyFromAsync(src: Tensor, byteLength: number, stream: never): void;
  free(): void;
}

/** A backend whose downloads can land in pinned memory (CudaBackend). */
export interface PinnedBackend extends Backend {
  readonly stream: unknown;
  allocPinned(byteLength: number): PinnedMemory;
}

export function hasPinnedMemory(b: Backend): b is PinnedBackend {
  return typeof (b as Partial<PinnedBackend>).allocPinned === 'function' && 'stream' in b;
}

export const NUM_RESULT_SLOTS = 2;

export class ResultSlots {
  private readonly slots: PinnedMemory[] = [];
  private next = 0;

  /** @param maxWords i32 words one step downloads at most */
  constructor(private readonly backend: PinnedBackend, readonly maxWords: number) {
    for (let i = 0; i < NUM_RESULT_SLOTS; i++) this.slots.push(backend.allocPinned(4 * Math.max(1, maxWords)));
  }

  /** Queues a copy of the first `numWords` i32 of `src` into the next slot; returns the slot. */
  download(src: Tensor, numWords: number): number {
    if (numWords > this.maxWords) {
      throw new PeregrineError('PGN_ERR_INTERNAL', `a step's results of ${numWords} words exceed the ${this.maxWords} words of a result slot`, { numWords });
    }
    const slot = this.next;
    this.next = (this.next + 1) % NUM_RESULT_SLOTS;
    this.slots[slot]!.copyFromAsync(src, 4 * numWords, this.backend.stream as never);
    return slot;
  }

  /** The words of `slot` (a copy), once the copy into it has completed. */
  read(slot: number, numWords: number): Int32Array {
    return new Int32Array(this.slots[slot]!.bytes, 0, numWords).slice();
  }

  dispose(): void {
    for (const s of this.slots) s.free();
    this.slots.length = 0;
  }
}

/** The results of downloaded token ids, for rows that asked for no logprobs. */
export function idsToResults(ids: Int32Array, vocab: number): SampleResult[] {
  return Array.from(ids, (tokenId) => {
    if (tokenId < 0 || tokenId >= vocab) {
      throw new PeregrineError('PGN_ERR_INTERNAL', `cannot sample: every logit in the row of ${vocab} is -inf or NaN`, { vocab });
    }
    return { tokenId, logprob: Number.NaN, topLogprobs: null };
  });
}
