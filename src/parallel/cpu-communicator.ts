/**
 * Collectives between CPU-backend ranks in worker threads of one process, over a
 * SharedArrayBuffer: each rank owns a slot, writes its part, meets the others at a barrier
 * (Atomics.wait / notify), reads what it needs, and meets them again before the slots are
 * reused. Every rank sums in rank order, so replicated activations stay bit-identical.
 *
 * A rank that dies (its thread's 'exit' calls `abort`) or stalls past `timeoutMs` turns every
 * waiting or later collective into PGN_ERR_ENGINE_DEAD: no rank hangs.
 */
import type { Tensor } from '../backends/backend.js';
import { cpuData } from '../backends/cpu/cpu-backend.js';
import { PeregrineError } from '../errors.js';
import type { Communicator } from './communicator.js';

/** how long a barrier sleeps between checks of the abort flag and the deadline */
const WAIT_SLICE_MS = 50;
export const DEFAULT_COLLECTIVE_TIMEOUT_MS = 10 * 60_000;
const MAX_REASON_BYTES = 512;
// control words
const ARRIVED = 0;
const GENERATION = 1;
const ABORTED = 2;
const REASON_BYTES = 3;
const NUM_CONTROL_WORDS = 4;
// ABORTED's states: the first abort claims the word (WRITING), writes its reason, then publishes it (ABORTED_SET),
// so that no rank reads a reason half written (a rank seeing the claim first used to read an empty one)
const NOT_ABORTED = 0;
const WRITING = 1;
const ABORTED_SET = 2;
/** how long a reader waits for a claimed reason to be published (its writer may have been killed mid-write) */
const REASON_WAIT_MS = 200;

/** The memory one group shares; made once by the group and handed to every rank's thread. */
export interface CpuCommShared {
  readonly size: number;
  /** elements of one rank's slot: the largest collective's per-rank part */
  readonly capacity: number;
  readonly control: SharedArrayBuffer;
  readonly slots: SharedArrayBuffer;
}

export function createCpuCommShared(size: number, capacity: number): CpuCommShared {
  return {
    size,
    capacity,
    control: new SharedArrayBuffer(NUM_CONTROL_WORDS * 4 + MAX_REASON_BYTES),
    slots: new SharedArrayBuffer(size * capacity * 4),
  };
}

type Storage = Float32Array | Int32Array;

export class CpuCommunicator implements Communicator {
  readonly size: number;
  private readonly ctl: Int32Array;
  private readonly reason: Uint8Array;
  private readonly f32: Float32Array;
  private readonly i32: Int32Array;

  constructor(private readonly shared: CpuCommShared, readonly rank: number, private readonly timeoutMs = DEFAULT_COLLECTIVE_TIMEOUT_MS) {
    this.size = shared.size;
    this.ctl = new Int32Array(shared.control, 0, NUM_CONTROL_WORDS);
    this.reason = new Uint8Array(shared.control, NUM_CONTROL_WORDS * 4, MAX_REASON_BYTES);
    this.f32 = new Float32Array(shared.slots);
    this.i32 = new Int32Array(shared.slots);
  }

  allReduceSum(t: Tensor, numel: number): void {
    const x = this.data(t, numel, 'allReduceSum');
    this.slot(x, this.rank, numel).set(x.subarray(0, numel));
    this.barrier();
    x.set(this.slot(x, 0, numel));
    for (let k = 1; k < this.size; k++) {
      const s = this.slot(x, k, numel);
      for (let i = 0; i < numel; i++) x[i] += s[i]!;
    }
    this.barrier();
  }

  allGather(out: Tensor, t: Tensor, numRows: number, width: number): void {
    const n = numRows * width;
    const x = this.data(t, n, 'allGather');
    const o = this.data(out, n * this.size, 'allGather');
    this.slot(x, this.rank, n).set(x.subarray(0, n));
    this.barrier();
    const rowWidth = this.size * width;
    for (let k = 0; k < this.size; k++) {
      const s = this.slot(o, k, n);
      for (let r = 0; r < numRows; r++) o.set(s.subarray(r * width, (r + 1) * width), r * rowWidth + k * width);
    }
    this.barrier();
  }

  broadcast(t: Tensor, numel: number, root: number): void {
    const x = this.data(t, numel, 'broadcast');
    if (this.rank === root) this.slot(x, root, numel).set(x.subarray(0, numel));
    this.barrier();
    if (this.rank !== root) x.set(this.slot(x, root, numel));
    this.barrier();
  }

  abort(reason: string): void {
    if (Atomics.compareExchange(this.ctl, ABORTED, NOT_ABORTED, WRITING) !== NOT_ABORTED) return; // the first reason wins
    const bytes = new TextEncoder().encode(reason).subarray(0, MAX_REASON_BYTES);
    this.reason.set(bytes);
    Atomics.store(this.ctl, REASON_BYTES, bytes.length);
    Atomics.store(this.ctl, ABORTED, ABORTED_SET);
    Atomics.notify(this.ctl, ABORTED);
    Atomics.notify(this.ctl, GENERATION);
  }

  dispose(): void {}

  /** The first rank to arrive waits for the others; the last one opens the next generation. */
  private barrier(): void {
    this.throwIfAborted();
    const c = this.ctl;
    const gen = Atomics.load(c, GENERATION);
    if (Atomics.add(c, ARRIVED, 1) === this.size - 1) {
      Atomics.store(c, ARRIVED, 0);
      Atomics.add(c, GENERATION, 1);
      Atomics.notify(c, GENERATION);
      return;
    }
    const deadline = Date.now() + this.timeoutMs;
    while (Atomics.load(c, GENERATION) === gen) {
      this.throwIfAborted();
      const left = deadline - Date.now();
      if (left <= 0) {
        this.abort(`rank ${this.rank} waited ${this.timeoutMs} ms for the other ranks at a collective`);
        this.throwIfAborted();
      }
      Atomics.wait(c, GENERATION, gen, Math.min(left, WAIT_SLICE_MS));
    }
  }

  private throwIfAborted(): void {
    if (Atomics.load(this.ctl, ABORTED) === NOT_ABORTED) return;
    const deadline = Date.now() + REASON_WAIT_MS;
    while (Atomics.load(this.ctl, ABORTED) === WRITING && Date.now() < deadline) Atomics.wait(this.ctl, ABORTED, WRITING, 5);
    const reason = new TextDecoder().decode(this.reason.slice(0, Atomics.load(this.ctl, REASON_BYTES)));
    throw new PeregrineError('PGN_ERR_ENGINE_DEAD', `tensor-parallel group stopped: ${reason}`, { rank: this.rank, reason });
  }

  private data(t: Tensor, numel: number, op: string): Storage {
    const d = cpuData(t);
    if (numel > d.length) throw new PeregrineError('PGN_ERR_INTERNAL', `${op}: ${numel} elements do not fit tensor [${t.shape.join(', ')}]`, { op, numel, shape: t.shape });
    return d;
  }

  /** rank k's slot, seen with the element type of `like` */
  private slot(like: Storage, k: number, numel: number): Storage {
    if (numel > this.shared.capacity) {
      throw new PeregrineError('PGN_ERR_INTERNAL', `a collective of ${numel} elements exceeds the CPU communicator's slots of ${this.shared.capacity}`, { numel, capacity: this.shared.capacity });
    }
    const all = like instanceof Int32Array ? this.i32 : this.f32;
    return all.subarray(k * this.shared.capacity, k * this.shared.capacity + numel);
  }
}
