/**
 * A worker thread that joins an NCCL group: ncclCommInitRank blocks until every rank has joined, and here
 * it blocks this thread only, so the thread that asked stays free to notice a rank that died first (and to
 * give up: this thread is unref'd and left behind, as NCCL cannot cancel a pending init). NCCL takes its
 * device from the calling thread: the device's primary context is made current here first.
 * workerData: JoinRequest; posts one JoinReply.
 */
import { parentPort, workerData } from 'node:worker_threads';
import koffi from 'koffi';

export interface JoinRequest {
  readonly ncclPath: string;
  readonly driverPath: string;
  /** the device ordinal of the communicator's backend (in this process's CUDA_VISIBLE_DEVICES) */
  readonly ordinal: number;
  readonly uniqueId: readonly number[];
  readonly rank: number;
  readonly size: number;
}

/** `comm`: the ncclComm_t's address when ncclResult is 0; cudaResult: a driver call before init failed */
export type JoinReply = { readonly ncclResult: number; readonly comm: number } | { readonly cudaResult: number; readonly call: string };

function join(r: JoinRequest): JoinReply {
  koffi.struct('PgnNcclJoinId', { internal: koffi.array('uint8_t', r.uniqueId.length) });
  const cu = koffi.load(r.driverPath);
  const calls: [string, () => number][] = [];
  const ctx = [0], dev = [0];
  const cuInit = cu.func('int cuInit(unsigned int flags)');
  const deviceGet = cu.func('int cuDeviceGet(_Out_ int *device, int ordinal)');
  const retain = cu.func('int cuDevicePrimaryCtxRetain(_Out_ uint64_t *ctx, int device)');
  const setCurrent = cu.func('int cuCtxSetCurrent(uint64_t ctx)');
  const release = cu.func('int cuDevicePrimaryCtxRelease_v2(int device)');
  calls.push(
    ['cuInit', () => cuInit(0) as number],
    ['cuDeviceGet', () => deviceGet(dev, r.ordinal) as number],
    ['cuDevicePrimaryCtxRetain', () => retain(ctx, dev[0]) as number],
    ['cuCtxSetCurrent', () => setCurrent(ctx[0]) as number],
  );
  for (const [call, f] of calls) {
    const cudaResult = f();
    if (cudaResult !== 0) return { cudaResult, call };
  }
  try {
    const init = koffi.load(r.ncclPath).func('int ncclCommInitRank(_Out_ uint64_t *comm, int nranks, PgnNcclJoinId id, int rank)');
    const comm = [0];
    const ncclResult = init(comm, r.size, { internal: r.uniqueId }, r.rank) as number;
    return { ncclResult, comm: Number(comm[0]) };
  } finally {
    release(dev[0]); // the communicator keeps the context: the backend that asked holds it too
  }
}

parentPort!.postMessage(join(workerData as JoinRequest));
