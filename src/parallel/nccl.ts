/**
 * NCCL through koffi (`libnccl.so.2`, found by the dynamic loader or the CUDA library finder):
 * the unique id, communicator init / destroy / abort, and all-reduce, all-gather and broadcast
 * queued on the CUDA backend's stream (so they run in order with the model's kernels and can
 * be captured in CUDA graphs). NcclCommunicator is the Communicator of one GPU per process.
 *
 * NVLink SHARP multicast stays off (NCCL_NVLS_ENABLE=0): it takes fabric resources that
 * shared hosts must not hold.
 */
import { SHARE_ENV, Worker } from 'node:worker_threads';
import koffi from 'koffi';
import { bytesPerElement, type Backend, type DType, type Tensor } from '../backends/backend.js';
import { CudaBackend } from '../backends/cuda/cuda-backend.js';
import { asCuda } from '../backends/cuda/cuda-tensor.js';
import { check, CU_MEMORYTYPE_DEVICE, HANDLE, type DevicePtr, type Handle } from '../backends/cuda/driver.js';
import { findLibrary, type LibrarySpec } from '../backends/cuda/library-finder.js';
import { PeregrineError } from '../errors.js';
import { stepTimeoutMs } from '../runner/device-wait.js';
import type { JoinReply, JoinRequest } from './nccl-join.js';
import type { Communicator } from './communicator.js';

export const NCCL: LibrarySpec = { stem: 'libnccl.so', versions: [2], what: 'NCCL (the nvidia-nccl-cu12 pip wheel or the libnccl2 package)' };
export const NCCL_UNIQUE_ID_BYTES = 128;
const JOIN_URL = new URL('./nccl-join.js', import.meta.url);
const NCCL_SUM = 0;
const NCCL_DTYPE: Record<DType, number> = { i32: 2, f16: 6, f32: 7, bf16: 9 };

void HANDLE; // registers the handle type used below
const H = 'PgnCuHandle';
koffi.struct('PgnNcclUniqueId', { internal: koffi.array('uint8_t', NCCL_UNIQUE_ID_BYTES) });

const SIGNATURES = {
  ncclGetVersion: 'int ncclGetVersion(_Out_ int *version)',
  ncclGetUniqueId: 'int ncclGetUniqueId(_Out_ PgnNcclUniqueId *id)',
  ncclCommDestroy: 'int ncclCommDestroy(uint64_t comm)',
  ncclCommAbort: 'int ncclCommAbort(uint64_t comm)',
  ncclAllReduce: `int ncclAllReduce(uint64_t sendbuff, uint64_t recvbuff, size_t count, int datatype, int op, uint64_t comm, ${H} stream)`,
  ncclAllGather: `int ncclAllGather(uint64_t sendbuff, uint64_t recvbuff, size_t sendcount, int datatype, uint64_t comm, ${H} stream)`,
  ncclBroadcast: `int ncclBroadcast(uint64_t sendbuff, uint64_t recvbuff, size_t count, int datatype, int root, uint64_t comm, ${H} stream)`,
  ncclGetErrorString: 'const char *ncclGetErrorString(int result)',
} as const;

type Fn = (...args: unknown[]) => unknown;
type Nccl = { readonly [K in keyof typeof SIGNATURES]: Fn } & { readonly ncclGetLastError: Fn | null; readonly path: string };

let cached: Nccl | null = null;

/** Binds NCCL once per process; PGN_ERR_LIBRARY_NOT_FOUND naming the folders searched without it. */
export function loadNccl(): Nccl {
  if (cached) return cached;
  let lib: ReturnType<typeof koffi.load>, path = 'libnccl.so.2';
  try {
    lib = koffi.load(path);
  } catch {
    path = findLibrary(NCCL);
    lib = koffi.load(path);
  }
  const fns: Record<string, unknown> = { path };
  for (const [name, sig] of Object.entries(SIGNATURES)) fns[name] = lib.func(sig);
  try {
    fns.ncclGetLastError = lib.func('const char *ncclGetLastError(uint64_t comm)'); // NCCL >= 2.13
  } catch {
    fns.ncclGetLastError = null;
  }
  cached = fns as unknown as Nccl;
  return cached;
}

function ncclCheck(nccl: Nccl, result: unknown, call: string, comm: number | null = null): void {
  if (result === 0) return;
  const text = nccl.ncclGetErrorString(result) as string;
  const last = comm !== null && nccl.ncclGetLastError ? (nccl.ncclGetLastError(comm) as string | null) : null;
  throw new PeregrineError('PGN_ERR_NCCL', `${call} failed: ${text} (ncclResult ${String(result)})${last ? `: ${last}` : ''}`, { call, ncclResult: result });
}

/** NCCL's version as a number (e.g. 22105 for 2.21.5). */
export function ncclVersion(): number {
  const nccl = loadNccl();
  const box = [0];
  ncclCheck(nccl, nccl.ncclGetVersion(box), 'ncclGetVersion');
  return box[0]!;
}

/** A fresh ncclUniqueId (128 bytes): made by rank 0, handed to every rank before they join. */
export function ncclUniqueId(): Uint8Array {
  const nccl = loadNccl();
  const id: { internal?: ArrayLike<number> } = {};
  ncclCheck(nccl, nccl.ncclGetUniqueId(id), 'ncclGetUniqueId');
  return Uint8Array.from(id.internal!);
}

export class NcclCommunicator implements Communicator {
  private staging: { ptr: DevicePtr; sizeBytes: number } | null = null;
  private aborted = false;
  private destroyed = false;

  private constructor(
    readonly rank: number,
    readonly size: number,
    private readonly nccl: Nccl,
    /** the ncclComm_t's address */
    private readonly comm: number,
    private readonly backend: CudaBackend,
  ) {}

  /**
   * Joins the group of `size` ranks named by `uniqueId` as `rank`, on the backend's device, once every
   * rank has joined. ncclCommInitRank runs on a worker thread (nccl-join.ts), so this thread stays free
   * (peers' exits, node links) while it waits; the wait is bounded.
   * @param opts.giveUp rejects to stop waiting (a rank died before joining): this rejects with its error
   * @param opts.timeoutMs default PEREGRINE_STEP_TIMEOUT_S (10 minutes)
   * @throws PeregrineError PGN_ERR_ENGINE_DEAD when not every rank joined in time; PGN_ERR_NCCL
   */
  static async create(backend: Backend, uniqueId: Uint8Array, rank: number, size: number, opts: { giveUp?: Promise<never>; timeoutMs?: number } = {}): Promise<NcclCommunicator> {
    if (!(backend instanceof CudaBackend)) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `NCCL needs the CUDA backend, got ${backend.device}`, { device: backend.device });
    if (uniqueId.length !== NCCL_UNIQUE_ID_BYTES) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `an ncclUniqueId has ${NCCL_UNIQUE_ID_BYTES} bytes, got ${uniqueId.length}`);
    process.env.NCCL_NVLS_ENABLE = '0';
    const nccl = loadNccl();
    const call = `ncclCommInitRank(rank ${rank} of ${size})`;
    const request: JoinRequest = { ncclPath: nccl.path, driverPath: backend.dev.drv.path, ordinal: backend.dev.props.ordinal, uniqueId: Array.from(uniqueId), rank, size };
    const worker = new Worker(JOIN_URL, { workerData: request, env: SHARE_ENV });
    let givenUp = false;
    const joined = new Promise<NcclCommunicator>((resolve, reject) => {
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new PeregrineError('PGN_ERR_NCCL', `${call}: the joining thread exited (code ${code}) without an answer`, { call })));
      worker.once('message', (m: JoinReply) => {
        if ('cudaResult' in m) return reject(new PeregrineError('PGN_ERR_CUDA', `${call}: ${m.call} failed on the joining thread (CUresult ${m.cudaResult})`, { call: m.call, cudaResult: m.cudaResult }));
        if (givenUp && m.ncclResult === 0) nccl.ncclCommAbort(m.comm); // joined after all: leave at once
        try {
          ncclCheck(nccl, m.ncclResult, call);
          resolve(new NcclCommunicator(rank, size, nccl, m.comm, backend));
        } catch (e) {
          reject(e);
        }
      });
    });
    const timeoutMs = opts.timeoutMs ?? stepTimeoutMs();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new PeregrineError('PGN_ERR_ENGINE_DEAD', `rank ${rank}: not every one of the ${size} ranks joined NCCL within ${(timeoutMs / 1000).toFixed(0)} s (PEREGRINE_STEP_TIMEOUT_S sets the limit)`, { rank, size, timeoutMs })), timeoutMs);
    });
    try {
      return await Promise.race([joined, late, ...(opts.giveUp ? [opts.giveUp] : [])]);
    } catch (e) {
      // NCCL cannot cancel a pending init: its thread stays blocked, unref'd so that it keeps nobody alive
      givenUp = true;
      joined.catch(() => {});
      worker.unref();
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  allReduceSum(t: Tensor, numel: number): void {
    const c = asCuda(t, 'allReduceSum', 'tensor');
    this.enqueue('ncclAllReduce', () => this.nccl.ncclAllReduce(c.ptr, c.ptr, numel, NCCL_DTYPE[c.dtype], NCCL_SUM, this.comm, this.stream));
  }

  /** NCCL gathers rank blocks one after another; 2-D copies lay them side by side as columns. */
  allGather(out: Tensor, t: Tensor, numRows: number, width: number): void {
    const x = asCuda(t, 'allGather', 'tensor');
    const o = asCuda(out, 'allGather', 'out');
    const n = numRows * width;
    const dt = NCCL_DTYPE[x.dtype];
    if (numRows === 1) {
      this.enqueue('ncclAllGather', () => this.nccl.ncclAllGather(x.ptr, o.ptr, n, dt, this.comm, this.stream));
      return;
    }
    const e = bytesPerElement(x.dtype);
    const staging = this.stagingPtr(n * this.size * e); // [size, numRows, width]
    this.enqueue('ncclAllGather', () => this.nccl.ncclAllGather(x.ptr, staging, n, dt, this.comm, this.stream));
    for (let k = 0; k < this.size; k++) {
      const copy = {
        srcXInBytes: 0, srcY: 0, srcMemoryType: CU_MEMORYTYPE_DEVICE, srcHost: null, srcDevice: staging + k * n * e, srcArray: null, srcPitch: width * e,
        dstXInBytes: 0, dstY: 0, dstMemoryType: CU_MEMORYTYPE_DEVICE, dstHost: null, dstDevice: o.ptr + k * width * e, dstArray: null, dstPitch: this.size * width * e,
        WidthInBytes: width * e, Height: numRows,
      };
      check(this.backend.dev.drv, this.backend.dev.drv.cuMemcpy2DAsync(copy, this.stream), 'cuMemcpy2DAsync');
    }
  }

  broadcast(t: Tensor, numel: number, root: number): void {
    const c = asCuda(t, 'broadcast', 'tensor');
    this.enqueue('ncclBroadcast', () => this.nccl.ncclBroadcast(c.ptr, c.ptr, numel, NCCL_DTYPE[c.dtype], root, this.comm, this.stream));
  }

  /** ncclCommAbort: collectives in flight return, so a stream waiting on a dead rank drains. */
  abort(_reason: string): void {
    if (this.aborted || this.destroyed) return;
    this.aborted = true;
    this.nccl.ncclCommAbort(this.comm);
  }

  dispose(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.backend.stream.synchronize();
    this.freeStaging();
    if (!this.aborted) ncclCheck(this.nccl, this.nccl.ncclCommDestroy(this.comm), 'ncclCommDestroy');
  }

  private get stream(): Handle {
    return this.backend.stream.handle;
  }

  /** an aborted communicator is freed by NCCL: nothing may be queued on it */
  private enqueue(name: string, call: () => unknown): void {
    if (this.aborted || this.destroyed) throw new PeregrineError('PGN_ERR_ENGINE_DEAD', `${name} on a closed NCCL communicator (rank ${this.rank})`, { rank: this.rank });
    ncclCheck(this.nccl, call(), name, this.comm);
  }

  /** Grows on first use, in the eager run that precedes any graph capture. */
  private stagingPtr(sizeBytes: number): DevicePtr {
    if (!this.staging || this.staging.sizeBytes < sizeBytes) {
      this.freeStaging();
      this.staging = { ptr: this.backend.allocator.alloc(sizeBytes), sizeBytes };
    }
    return this.staging.ptr;
  }

  private freeStaging(): void {
    if (this.staging) this.backend.allocator.free(this.staging.ptr);
    this.staging = null;
  }
}
