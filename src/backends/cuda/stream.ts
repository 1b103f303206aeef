/** Streams and events: ordered queues of device work, and markers for waiting and timing. */
import { check, CU_EVENT_DEFAULT, CU_EVENT_DISABLE_TIMING, CU_STREAM_NON_BLOCKING, CUDA_ERROR_NOT_READY, cudaError, out, type Driver, type Handle } from './driver.js';

export class CudaStream {
  readonly handle: Handle;
  readonly #drv: Driver;
  #destroyed = false;

  constructor(drv: Driver) {
    this.#drv = drv;
    this.handle = out<Handle>((b) => drv.cuStreamCreate(b, CU_STREAM_NON_BLOCKING), drv, 'cuStreamCreate', null);
  }

  synchronize(): void {
    check(this.#drv, this.#drv.cuStreamSynchronize(this.handle), 'cuStreamSynchronize');
  }

  /** Later work on this stream waits for `event`. */
  wait(event: CudaEvent): void {
    check(this.#drv, this.#drv.cuStreamWaitEvent(this.handle, event.handle, 0), 'cuStreamWaitEvent');
  }

  /**
   * Whether the last launch queued here was a library kernel (cuBLASLt) rather than one of ours: the next of ours
   * launches without PDL unless PEREGRINE_PDL_AFTER_CUBLAS=1 (pdl.ts). Set by LtPlans.matmul, cleared by Kernel.launch.
   */
  afterLibraryKernel = false;

  get isCapturing(): boolean {
    return out<number>((b) => this.#drv.cuStreamIsCapturing(this.handle, b), this.#drv, 'cuStreamIsCapturing', 0) !== 0;
  }

  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    check(this.#drv, this.#drv.cuStreamDestroy(this.handle), 'cuStreamDestroy');
  }
}

export class CudaEvent {
  readonly handle: Handle;
  readonly #drv: Driver;
  #destroyed = false;

  constructor(drv: Driver, opts: { timing?: boolean } = {}) {
    this.#drv = drv;
    const flags = opts.timing === false ? CU_EVENT_DISABLE_TIMING : CU_EVENT_DEFAULT;
    this.handle = out<Handle>((b) => drv.cuEventCreate(b, flags), drv, 'cuEventCreate', null);
  }

  record(stream: CudaStream): void {
    check(this.#drv, this.#drv.cuEventRecord(this.handle, stream.handle), 'cuEventRecord');
  }

  synchronize(): void {
    check(this.#drv, this.#drv.cuEventSynchronize(this.handle), 'cuEventSynchronize');
  }

  /** true once every piece of work recorded before it has finished */
  query(): boolean {
    const rc = this.#drv.cuEventQuery(this.handle);
    if (rc === CUDA_ERROR_NOT_READY) return false;
    if (rc !== 0) throw cudaError(this.#drv, rc, 'cuEventQuery');
    return true;
  }

  /** Milliseconds from `start` to this event (both recorded and complete). */
  elapsedMsSince(start: CudaEvent): number {
    return out<number>((b) => this.#drv.cuEventElapsedTime(b, start.handle, this.handle), this.#drv, 'cuEventElapsedTime', 0);
  }

  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    check(this.#drv, this.#drv.cuEventDestroy(this.handle), 'cuEventDestroy');
  }
}
