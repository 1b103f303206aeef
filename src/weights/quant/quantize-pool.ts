/**
 * Quantizes linear weights on worker threads (one tensor per task), so `peregrine build` uses
 * every core; with jobs <= 1 it runs inline. Buffers move to the worker and back without copies.
 */
import { Worker } from 'node:worker_threads';
import { PeregrineError, type ErrorCode } from '../../errors.js';
import type { StorageDType } from '../../backends/backend.js';
import type { TensorToWrite } from '../safetensors-writer.js';
import { toFloat32 } from '../dtype.js';
import { quantizeForCheckpoint, type CheckpointQuantOptions } from './checkpoint-writer.js';

export interface QuantizeTask {
  /** the weight as stored (F32 / F16 / BF16 bytes): converting on the worker keeps the main thread on I/O */
  readonly bytes: Uint8Array;
  readonly dtype: StorageDType;
  readonly N: number;
  readonly K: number;
  readonly opts: CheckpointQuantOptions;
  readonly module: string;
}

export interface WorkerReply {
  readonly id: number;
  readonly tensors?: Record<string, TensorToWrite>;
  readonly error?: { readonly code?: ErrorCode; readonly message: string; readonly details?: Record<string, unknown> };
}

export class QuantizePool {
  private readonly workers: Worker[] = [];
  private readonly idle: Worker[] = [];
  private readonly queue: { task: QuantizeTask; id: number }[] = [];
  private readonly waiting = new Map<number, { resolve: (t: Record<string, TensorToWrite>) => void; reject: (e: Error) => void }>();
  private nextId = 0;

  constructor(readonly jobs: number) {
    for (let i = 0; i < (jobs > 1 ? jobs : 0); i++) {
      const worker = new Worker(new URL('./quantize-worker.js', import.meta.url));
      worker.on('message', (reply: WorkerReply) => this.settle(worker, reply));
      worker.on('error', (e) => this.failAll(e));
      this.workers.push(worker);
      this.idle.push(worker);
    }
  }

  run(task: QuantizeTask): Promise<Record<string, TensorToWrite>> {
    if (this.workers.length === 0) {
      try {
        return Promise.resolve(runTask(task));
      } catch (e) {
        return Promise.reject(e);
      }
    }
    const id = this.nextId++;
    const done = new Promise<Record<string, TensorToWrite>>((resolve, reject) => this.waiting.set(id, { resolve, reject }));
    this.queue.push({ task, id });
    this.dispatch();
    return done;
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  private dispatch(): void {
    while (this.idle.length && this.queue.length) {
      const worker = this.idle.pop()!;
      const { task, id } = this.queue.shift()!;
      worker.postMessage({ id, ...task }, [task.bytes.buffer as ArrayBuffer]);
    }
  }

  private settle(worker: Worker, reply: WorkerReply): void {
    const waiter = this.waiting.get(reply.id);
    this.waiting.delete(reply.id);
    this.idle.push(worker);
    if (reply.error) {
      const { code, message, details } = reply.error;
      waiter?.reject(code ? new PeregrineError(code, message, details) : new Error(message));
    } else {
      waiter?.resolve(reply.tensors!);
    }
    this.dispatch();
  }

  private failAll(e: Error): void {
    for (const w of this.waiting.values()) w.reject(e);
    this.waiting.clear();
  }
}

/** Quantize one task (on a worker or inline). */
export function runTask(task: QuantizeTask): Record<string, TensorToWrite> {
  return quantizeForCheckpoint(toFloat32(task.dtype, task.bytes), task.N, task.K, task.opts, task.module);
}

/** The distinct buffers of a task's output, to transfer rather than copy. */
export function transferList(tensors: Record<string, TensorToWrite>): ArrayBuffer[] {
  return [...new Set(Object.values(tensors).map((t) => t.data.buffer as ArrayBuffer))];
}
