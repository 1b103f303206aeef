/**
 * The CUDA driver API (`libcuda.so.1`) through koffi: the functions Peregrine calls,
 * bound once per process, and CUresult codes turned into PeregrineErrors
 * (`PGN_ERR_CUDA`, message from cuGetErrorName / cuGetErrorString).
 *
 * Handles (contexts, streams, modules, ...) are opaque koffi pointers; device pointers
 * are plain numbers (CUdeviceptr, below 2^53 on every GPU we know).
 */
import koffi from 'koffi';
import { PeregrineError, type ErrorCode } from '../../errors.js';
import { DRIVER_DIRS, librarySearchDirs, libraryNotFound } from './library-finder.js';

/** An opaque driver handle (CUcontext, CUstream, CUevent, CUmodule, CUfunction, CUgraph, CUgraphExec). */
export type Handle = unknown;
/** A device address (CUdeviceptr). */
export type DevicePtr = number;

type KoffiLib = ReturnType<typeof koffi.load>;
type Fn = ReturnType<KoffiLib['func']>;

export const HANDLE = koffi.pointer('PgnCuHandle', koffi.opaque());
const H = 'PgnCuHandle';
/** CUipcMemHandle: 64 opaque bytes that name a cuMemAlloc allocation to another process */
export const CU_IPC_HANDLE_BYTES = 64;
koffi.struct('PgnCuIpcMemHandle', { reserved: koffi.array('uint8_t', CU_IPC_HANDLE_BYTES) });
/** CUDA_MEMCPY2D (cuda.h) */
koffi.struct('PgnCudaMemcpy2D', {
  srcXInBytes: 'size_t', srcY: 'size_t', srcMemoryType: 'int', srcHost: 'void *', srcDevice: 'uint64_t', srcArray: 'void *', srcPitch: 'size_t',
  dstXInBytes: 'size_t', dstY: 'size_t', dstMemoryType: 'int', dstHost: 'void *', dstDevice: 'uint64_t', dstArray: 'void *', dstPitch: 'size_t',
  WidthInBytes: 'size_t', Height: 'size_t',
});
/** CUmemorytype */
export const CU_MEMORYTYPE_HOST = 1;
export const CU_MEMORYTYPE_DEVICE = 2;

const SIGNATURES = {
  cuInit: 'int cuInit(unsigned int flags)',
  cuDriverGetVersion: 'int cuDriverGetVersion(_Out_ int *version)',
  cuDeviceGetCount: 'int cuDeviceGetCount(_Out_ int *count)',
  cuDeviceGet: 'int cuDeviceGet(_Out_ int *device, int ordinal)',
  cuDeviceGetName: 'int cuDeviceGetName(char *name, int len, int device)',
  cuDeviceTotalMem: 'int cuDeviceTotalMem_v2(_Out_ size_t *bytes, int device)',
  cuDeviceGetAttribute: 'int cuDeviceGetAttribute(_Out_ int *value, int attribute, int device)',
  cuDevicePrimaryCtxRetain: `int cuDevicePrimaryCtxRetain(_Out_ ${H} *ctx, int device)`,
  cuDevicePrimaryCtxRelease: 'int cuDevicePrimaryCtxRelease_v2(int device)',
  cuCtxSetCurrent: `int cuCtxSetCurrent(${H} ctx)`,
  cuCtxSynchronize: 'int cuCtxSynchronize()',
  cuCtxGetDevice: 'int cuCtxGetDevice(_Out_ int *device)',
  cuMemGetInfo: 'int cuMemGetInfo_v2(_Out_ size_t *free, _Out_ size_t *total)',
  cuMemAlloc: 'int cuMemAlloc_v2(_Out_ uint64_t *dptr, size_t bytes)',
  cuMemFree: 'int cuMemFree_v2(uint64_t dptr)',
  // page-locked host memory (async scheduling's downloads)
  cuMemHostAlloc: 'int cuMemHostAlloc(_Out_ void **pp, size_t bytes, unsigned int flags)',
  cuMemFreeHost: 'int cuMemFreeHost(void *p)',
  cuMemcpyHtoDAsync: `int cuMemcpyHtoDAsync_v2(uint64_t dst, const void *src, size_t bytes, ${H} stream)`,
  cuMemcpy2DAsync: `int cuMemcpy2DAsync_v2(const PgnCudaMemcpy2D *copy, ${H} stream)`,
  cuMemcpyDtoHAsync: `int cuMemcpyDtoHAsync_v2(void *dst, uint64_t src, size_t bytes, ${H} stream)`,
  cuMemcpyDtoDAsync: `int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, ${H} stream)`,
  cuMemsetD8Async: `int cuMemsetD8Async(uint64_t dst, uint8_t value, size_t count, ${H} stream)`,
  cuMemsetD32Async: `int cuMemsetD32Async(uint64_t dst, unsigned int value, size_t count, ${H} stream)`,
  cuStreamCreate: `int cuStreamCreate(_Out_ ${H} *stream, unsigned int flags)`,
  cuStreamDestroy: `int cuStreamDestroy_v2(${H} stream)`,
  cuStreamSynchronize: `int cuStreamSynchronize(${H} stream)`,
  cuStreamWaitEvent: `int cuStreamWaitEvent(${H} stream, ${H} event, unsigned int flags)`,
  cuStreamBeginCapture: `int cuStreamBeginCapture_v2(${H} stream, int mode)`,
  cuStreamEndCapture: `int cuStreamEndCapture(${H} stream, _Out_ ${H} *graph)`,
  cuStreamIsCapturing: `int cuStreamIsCapturing(${H} stream, _Out_ int *status)`,
  cuEventCreate: `int cuEventCreate(_Out_ ${H} *event, unsigned int flags)`,
  cuEventDestroy: `int cuEventDestroy_v2(${H} event)`,
  cuEventRecord: `int cuEventRecord(${H} event, ${H} stream)`,
  cuEventSynchronize: `int cuEventSynchronize(${H} event)`,
  cuEventQuery: `int cuEventQuery(${H} event)`,
  cuModuleLoadData: `int cuModuleLoadData(_Out_ ${H} *module, const void *image)`,
  cuModuleUnload: `int cuModuleUnload(${H} module)`,
  cuModuleGetFunction: `int cuModuleGetFunction(_Out_ ${H} *fn, ${H} module, const char *name)`,
  cuFuncSetAttribute: `int cuFuncSetAttribute(${H} fn, int attribute, int value)`,
  cuFuncGetAttribute: `int cuFuncGetAttribute(_Out_ int *value, int attribute, ${H} fn)`,
  cuLaunchKernel: `int cuLaunchKernel(${H} fn, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz, unsigned int sharedBytes, ${H} stream, void *params, void *extra)`,
  cuGraphInstantiate: `int cuGraphInstantiateWithFlags(_Out_ ${H} *exec, ${H} graph, unsigned long long flags)`,
  cuGraphLaunch: `int cuGraphLaunch(${H} exec, ${H} stream)`,
  cuGraphExecDestroy: `int cuGraphExecDestroy(${H} exec)`,
  cuGraphDestroy: `int cuGraphDestroy(${H} graph)`,
  // CUDA IPC between the processes of a tensor-parallel group (parallel/custom-allreduce.ts)
  cuDeviceCanAccessPeer: 'int cuDeviceCanAccessPeer(_Out_ int *canAccessPeer, int dev, int peerDev)',
  cuIpcGetMemHandle: 'int cuIpcGetMemHandle(_Out_ PgnCuIpcMemHandle *handle, uint64_t dptr)',
  cuIpcOpenMemHandle: 'int cuIpcOpenMemHandle_v2(_Out_ uint64_t *dptr, PgnCuIpcMemHandle handle, unsigned int flags)',
  cuIpcCloseMemHandle: 'int cuIpcCloseMemHandle(uint64_t dptr)',
  cuGetErrorName: 'int cuGetErrorName(int error, _Out_ const char **name)',
  cuGetErrorString: 'int cuGetErrorString(int error, _Out_ const char **text)',
} as const;

/** cuLaunchKernelEx (CUDA 11.8+; optional: PDL launches, module.ts). `config` is a native CUlaunchConfig (pdl.ts). */
const LAUNCH_KERNEL_EX = `int cuLaunchKernelEx(const void *config, ${H} fn, void *params, void *extra)`;

/** cuEventElapsedTime became _v2 in CUDA 12.8; older drivers only have the first. */
const ELAPSED_TIME = ['int cuEventElapsedTime_v2(_Out_ float *ms, PgnCuHandle start, PgnCuHandle end)', 'int cuEventElapsedTime(_Out_ float *ms, PgnCuHandle start, PgnCuHandle end)'];

export type Driver = { readonly [K in keyof typeof SIGNATURES]: Fn } & {
  readonly cuEventElapsedTime: Fn;
  /** null where the driver predates it (then kernels launch without PDL) */
  readonly cuLaunchKernelEx: Fn | null;
  readonly path: string;
};

// CUresult values we act on
export const CUDA_SUCCESS = 0;
export const CUDA_ERROR_OUT_OF_MEMORY = 2;
export const CUDA_ERROR_NOT_READY = 600;

// enum values (cuda.h)
export const CU_STREAM_NON_BLOCKING = 1;
export const CU_EVENT_DEFAULT = 0;
export const CU_EVENT_DISABLE_TIMING = 2;
export const CU_STREAM_CAPTURE_MODE_RELAXED = 2;
export const CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 1;
export const CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
export const CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6;
export const CU_DEVICE_ATTRIBUTE = {
  MULTIPROCESSOR_COUNT: 16,
  MEMORY_CLOCK_RATE: 36,
  GLOBAL_MEMORY_BUS_WIDTH: 37,
  L2_CACHE_SIZE: 38,
  COMPUTE_CAPABILITY_MAJOR: 75,
  COMPUTE_CAPABILITY_MINOR: 76,
  MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: 97,
} as const;

let cached: Driver | null = null;
let loadError: PeregrineError | null = null;

function openLibcuda(): { lib: KoffiLib; path: string } {
  const searched = ['(the dynamic loader: ld.so.cache, LD_LIBRARY_PATH)'];
  try {
    return { lib: koffi.load('libcuda.so.1'), path: 'libcuda.so.1' };
  } catch {
    // fall through to the folders we know
  }
  for (const dir of [...DRIVER_DIRS, ...librarySearchDirs()]) {
    searched.push(dir);
    for (const name of ['libcuda.so.1', 'libcuda.so']) {
      const path = `${dir}/${name}`;
      try {
        return { lib: koffi.load(path), path };
      } catch {
        // not here
      }
    }
  }
  throw libraryNotFound('libcuda.so.1', 'the NVIDIA driver library', searched);
}

/** Binds the driver once per process; throws PGN_ERR_LIBRARY_NOT_FOUND without one. */
export function loadDriver(): Driver {
  if (cached) return cached;
  if (loadError) throw loadError;
  try {
    const { lib, path } = openLibcuda();
    const fns: Record<string, Fn | string | null> = { path };
    for (const [name, sig] of Object.entries(SIGNATURES)) fns[name] = lib.func(sig);
    let elapsed: Fn | null = null;
    for (const sig of ELAPSED_TIME) {
      try {
        elapsed = lib.func(sig);
        break;
      } catch {
        // try the older name
      }
    }
    if (!elapsed) throw new PeregrineError('PGN_ERR_CUDA', `${path} has no cuEventElapsedTime`, { library: path });
    fns.cuEventElapsedTime = elapsed;
    let launchEx: Fn | null = null;
    try {
      launchEx = lib.func(LAUNCH_KERNEL_EX);
    } catch {
      // a driver older than CUDA 11.8
    }
    fns.cuLaunchKernelEx = launchEx;
    cached = fns as unknown as Driver;
    return cached;
  } catch (e) {
    loadError = e instanceof PeregrineError ? e : new PeregrineError('PGN_ERR_CUDA', `cannot bind libcuda: ${(e as Error).message}`, {}, { cause: e });
    throw loadError;
  }
}

/** "CUDA_ERROR_OUT_OF_MEMORY (2): out of memory" */
export function describeCudaError(drv: Driver, code: number): string {
  const name: (string | null)[] = [null];
  const text: (string | null)[] = [null];
  const okName = drv.cuGetErrorName(code, name) === CUDA_SUCCESS && name[0];
  const okText = drv.cuGetErrorString(code, text) === CUDA_SUCCESS && text[0];
  return `${okName ? name[0] : 'CUDA error'} (${code})${okText ? `: ${text[0]}` : ''}`;
}

export function cudaError(drv: Driver, code: number, call: string, errorCode: ErrorCode = 'PGN_ERR_CUDA'): PeregrineError {
  return new PeregrineError(errorCode, `${call} failed: ${describeCudaError(drv, code)}`, { call, cudaError: code });
}

/** Throws PGN_ERR_CUDA unless `code` is CUDA_SUCCESS. */
export function check(drv: Driver, code: number, call: string): void {
  if (code !== CUDA_SUCCESS) throw cudaError(drv, code, call);
}

/** Reads a single `_Out_` value. */
export function out<T>(fill: (box: T[]) => number, drv: Driver, call: string, init: T): T {
  const box: T[] = [init];
  check(drv, fill(box), call);
  return box[0]!;
}
