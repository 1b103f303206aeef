/**
 * CUDA graphs: the work queued on a stream between beginCapture and endCapture is
 * recorded (not run) and instantiated once; replay launches all of it with one call.
 * Captured kernels keep the device addresses and scalar arguments they were queued
 * with: replaying reads whatever those buffers hold at the time, so a step's inputs
 * are written into the same tensors before each replay. Capture uses relaxed mode, so
 * allocations from the caching allocator during capture are allowed (their blocks must
 * outlive the graph).
 */
import { PeregrineError } from '../../errors.js';
import { check, CU_STREAM_CAPTURE_MODE_RELAXED, out, type Driver, type Handle } from './driver.js';
import type { CudaStream } from './stream.js';

export class CudaGraph {
  readonly #drv: Driver;
  readonly #graph: Handle;
  readonly #exec: Handle;
  #disposed = false;

  constructor(drv: Driver, graph: Handle) {
    this.#drv = drv;
    this.#graph = graph;
    this.#exec = out<Handle>((b) => drv.cuGraphInstantiate(b, graph, 0), drv, 'cuGraphInstantiate', null);
  }

  /** Queues one run of the whole graph on `stream`. */
  replay(stream: CudaStream): void {
    if (this.#disposed) throw new PeregrineError('PGN_ERR_INTERNAL', 'replay of a disposed CUDA graph');
    check(this.#drv, this.#drv.cuGraphLaunch(this.#exec, stream.handle), 'cuGraphLaunch');
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    check(this.#drv, this.#drv.cuGraphExecDestroy(this.#exec), 'cuGraphExecDestroy');
    check(this.#drv, this.#drv.cuGraphDestroy(this.#graph), 'cuGraphDestroy');
  }
}

export function beginCapture(drv: Driver, stream: CudaStream): void {
  if (stream.isCapturing) throw new PeregrineError('PGN_ERR_INTERNAL', 'beginCapture: the stream is already being captured');
  check(drv, drv.cuStreamBeginCapture(stream.handle, CU_STREAM_CAPTURE_MODE_RELAXED), 'cuStreamBeginCapture');
}

export function endCapture(drv: Driver, stream: CudaStream): CudaGraph {
  const graph = out<Handle>((b) => drv.cuStreamEndCapture(stream.handle, b), drv, 'cuStreamEndCapture', null);
  return new CudaGraph(drv, graph);
}
