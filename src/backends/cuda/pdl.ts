/**
 * Programmatic dependent launch (PDL, issue 3). Kernels are launched through
 * cuLaunchKernelEx with CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION: kernel n+1 may be
 * scheduled while kernel n drains, and its first statement, PGN_PDL_WAIT() (kernels/common.cuh),
 * holds it until kernel n's writes are visible. Stream capture records these launches as
 * programmatic graph edges (CUDA 12.3+). On by default where sm_90+ and a 12.3+ driver allow it;
 * PEREGRINE_PDL=0 turns it off, PEREGRINE_PDL=1 also warns where it cannot be used. Our kernel right after
 * a cuBLASLt matmul launches plainly (CudaStream.afterLibraryKernel): with PDL there, BF16 decode was 2-3%
 * slower. Measured 2026-11-28 (H100, 8B, bench/pdl-ab.sh, two alternating runs, off -> on): BF16 batch 1
 * 6.24-6.41 -> 6.25-6.26 ms, batch 8 6.48-6.68 -> 6.38, prefill 128 7.85-8.12 -> 7.86-7.89; FP8 batch 1
 * 4.08-4.13 -> 4.00-4.11, batch 8 4.34 -> 4.24-4.27 (an earlier call: batch 1 4.21-4.23 -> 4.01-4.06).
 *
 * A module's PdlLaunch owns one native CUlaunchConfig and its single attribute, rewritten in place
 * for each launch (no allocation; the driver reads them during the call). If the first PDL launch
 * fails, PDL is off for good (one warning) and kernels go through cuLaunchKernel as without it.
 */
import koffi from 'koffi';
import { CU_DEVICE_ATTRIBUTE, CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, CUDA_SUCCESS, describeCudaError, out, type Driver, type Handle } from './driver.js';

export const PDL_ENV = 'PEREGRINE_PDL';
/**
 * PEREGRINE_PDL_AFTER_CUBLAS=1: our kernel right after a cuBLASLt matmul launches with PDL too (an A/B knob);
 * by default it launches plainly (CudaStream.afterLibraryKernel), waiting for the matmul as without PDL.
 */
export const PDL_AFTER_CUBLAS = process.env.PEREGRINE_PDL_AFTER_CUBLAS === '1';
/** CUDA 12.3: the first driver whose stream capture keeps programmatic dependencies */
export const PDL_MIN_DRIVER_VERSION = 12030;
/** griddepcontrol needs sm_90; the kernels of older targets are built without it */
export const PDL_MIN_CC_MAJOR = 9;

/** Byte offsets of CUlaunchConfig (cuda.h, 64-bit): seven u32, 4 pad bytes, stream, attrs, numAttrs, 4 pad bytes. */
export const LAUNCH_CONFIG = {
  gridDimX: 0, gridDimY: 4, gridDimZ: 8, blockDimX: 12, blockDimY: 16, blockDimZ: 20, sharedMemBytes: 24,
  hStream: 32, attrs: 40, numAttrs: 48, sizeBytes: 56,
} as const;
/** Byte offsets of CUlaunchAttribute: id (u32), 4 pad bytes, the 64-byte CUlaunchAttributeValue union. */
export const LAUNCH_ATTRIBUTE = { id: 0, value: 8, valueBytes: 64, sizeBytes: 72 } as const;

/** What `env` asks for: 'off' (PEREGRINE_PDL=0), 'forced' (=1: warn where unsupported), else 'auto' (on where supported). */
export type PdlSetting = 'off' | 'auto' | 'forced';
export function pdlRequestedIn(env: NodeJS.ProcessEnv): PdlSetting {
  const v = env[PDL_ENV];
  return v === '0' ? 'off' : v === '1' ? 'forced' : 'auto';
}

let requested: PdlSetting | undefined;
/** pdlRequestedIn(process.env), read once per process. */
export function pdlRequested(): PdlSetting {
  requested ??= pdlRequestedIn(process.env);
  return requested;
}

/** Fills a CUlaunchConfig at the start of `view` (all but the tail padding). */
export function writeLaunchConfig(view: DataView, gx: number, gy: number, gz: number, bx: number, by: number, bz: number,
  sharedBytes: number, stream: bigint, attrs: bigint, numAttrs: number): void {
  const c = LAUNCH_CONFIG;
  view.setUint32(c.gridDimX, gx, true);
  view.setUint32(c.gridDimY, gy, true);
  view.setUint32(c.gridDimZ, gz, true);
  view.setUint32(c.blockDimX, bx, true);
  view.setUint32(c.blockDimY, by, true);
  view.setUint32(c.blockDimZ, bz, true);
  view.setUint32(c.sharedMemBytes, sharedBytes, true);
  view.setUint32(c.sharedMemBytes + 4, 0, true);
  view.setBigUint64(c.hStream, stream, true);
  view.setBigUint64(c.attrs, attrs, true);
  view.setUint32(c.numAttrs, numAttrs, true);
}

/** Writes the attribute "programmatic stream serialization allowed" (the whole 72 bytes) at the start of `view`. */
export function writePdlAttribute(view: DataView): void {
  for (let i = 0; i < LAUNCH_ATTRIBUTE.sizeBytes; i += 4) view.setUint32(i, 0, true);
  view.setUint32(LAUNCH_ATTRIBUTE.id, CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, true);
  view.setInt32(LAUNCH_ATTRIBUTE.value, 1, true); // value.programmaticStreamSerializationAllowed
}

/** Why PDL cannot be used with this driver and GPU, or null when it can. */
export function pdlUnsupportedReason(hasLaunchKernelEx: boolean, driverVersion: number, ccMajor: number, ccMinor: number): string | null {
  if (!hasLaunchKernelEx) return 'the driver has no cuLaunchKernelEx';
  if (driverVersion < PDL_MIN_DRIVER_VERSION) return `driver CUDA ${versionText(driverVersion)} is older than ${versionText(PDL_MIN_DRIVER_VERSION)} (graph capture of PDL edges)`;
  if (ccMajor < PDL_MIN_CC_MAJOR) return `the GPU is sm_${ccMajor}${ccMinor}; PDL needs sm_${PDL_MIN_CC_MAJOR}0 or newer`;
  return null;
}

function versionText(v: number): string {
  return `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}`;
}

/** One-line warnings, to stderr unless a test passes its own. */
export type Warn = (line: string) => void;
const toStderr: Warn = (line) => process.stderr.write(`peregrine: ${line}\n`);

export class PdlLaunch {
  readonly #drv: Driver;
  readonly #launchEx: NonNullable<Driver['cuLaunchKernelEx']>;
  readonly #warn: Warn;
  readonly #config: unknown;
  readonly #view: DataView;
  readonly #attrs: bigint;
  #stream: Handle = undefined;
  #streamAddress = 0n;
  #state: 'untried' | 'on' | 'off' = 'untried';

  /** Use `forCurrentContext` (or, in tests, pass a driver with cuLaunchKernelEx). */
  constructor(drv: Driver, warn: Warn = toStderr) {
    if (!drv.cuLaunchKernelEx) throw new Error('PdlLaunch needs cuLaunchKernelEx');
    this.#drv = drv;
    this.#launchEx = drv.cuLaunchKernelEx;
    this.#warn = warn;
    this.#config = koffi.alloc('uint8_t', LAUNCH_CONFIG.sizeBytes + LAUNCH_ATTRIBUTE.sizeBytes);
    const bytes = koffi.view(this.#config, LAUNCH_CONFIG.sizeBytes + LAUNCH_ATTRIBUTE.sizeBytes);
    this.#view = new DataView(bytes, 0, LAUNCH_CONFIG.sizeBytes);
    writePdlAttribute(new DataView(bytes, LAUNCH_CONFIG.sizeBytes, LAUNCH_ATTRIBUTE.sizeBytes));
    this.#attrs = koffi.address(this.#config) + BigInt(LAUNCH_CONFIG.sizeBytes);
  }

  /**
   * PDL for the current context's GPU unless PEREGRINE_PDL=0, where driver and GPU support it; else
   * null (with a one-line warning when PEREGRINE_PDL=1 asked for it).
   */
  static forCurrentContext(drv: Driver, warn: Warn = toStderr, requested = pdlRequested()): PdlLaunch | null {
    if (requested === 'off') return null;
    const device = out<number>((b) => drv.cuCtxGetDevice(b), drv, 'cuCtxGetDevice', 0);
    const attr = (a: number) => out<number>((b) => drv.cuDeviceGetAttribute(b, a, device), drv, 'cuDeviceGetAttribute', 0);
    const version = out<number>((b) => drv.cuDriverGetVersion(b), drv, 'cuDriverGetVersion', 0);
    const why = pdlUnsupportedReason(drv.cuLaunchKernelEx !== null, version, attr(CU_DEVICE_ATTRIBUTE.COMPUTE_CAPABILITY_MAJOR), attr(CU_DEVICE_ATTRIBUTE.COMPUTE_CAPABILITY_MINOR));
    if (why !== null) {
      if (requested === 'forced') warn(`${PDL_ENV}=1 ignored: ${why}`);
      return null;
    }
    return new PdlLaunch(drv, warn);
  }

  /** True once a PDL launch succeeded and PDL has not been turned off. */
  get active(): boolean {
    return this.#state === 'on';
  }

  /**
   * Launches `fn` with the PDL attribute: its CUresult, or null when PDL is off (launch it plainly).
   * A failure of the first PDL launch turns PDL off for good and returns null.
   */
  launch(fn: Handle, gx: number, gy: number, gz: number, bx: number, by: number, bz: number, sharedBytes: number,
    stream: Handle, params: unknown, kernelName: string): number | null {
    if (this.#state === 'off') return null;
    if (stream !== this.#stream) {
      this.#stream = stream;
      this.#streamAddress = stream ? koffi.address(stream) : 0n;
    }
    writeLaunchConfig(this.#view, gx, gy, gz, bx, by, bz, sharedBytes, this.#streamAddress, this.#attrs, 1);
    const rc = this.#launchEx(this.#config, fn, params, null) as number;
    if (this.#state === 'untried') {
      if (rc !== CUDA_SUCCESS) {
        this.#state = 'off';
        this.#warn(`PDL: the first PDL launch (cuLaunchKernelEx of ${kernelName}) failed with ${describeCudaError(this.#drv, rc)}; launching without PDL from now on`);
        return null;
      }
      this.#state = 'on';
    }
    return rc;
  }
}
