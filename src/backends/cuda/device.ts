/**
 * A GPU and its primary context: driver init, device properties, making the context
 * current on the calling thread, and memory info.
 */
import { PeregrineError } from '../../errors.js';
import { check, CU_DEVICE_ATTRIBUTE, loadDriver, out, type Driver, type Handle } from './driver.js';

export interface DeviceProps {
  readonly ordinal: number;
  readonly name: string;
  /** e.g. [9, 0] for an H100 */
  readonly computeCapability: readonly [number, number];
  readonly numSMs: number;
  readonly totalMemBytes: number;
  readonly l2CacheBytes: number;
  /** dynamic shared memory a block may opt in to */
  readonly maxSharedBytesPerBlock: number;
  /** from the memory clock and bus width (0 where the driver no longer reports them) */
  readonly peakBandwidthBytesPerSec: number;
  readonly driverVersion: number;
}

export class CudaDevice {
  readonly drv: Driver;
  readonly props: DeviceProps;
  readonly context: Handle;
  readonly #dev: number;
  #released = false;

  private constructor(drv: Driver, props: DeviceProps, context: Handle, dev: number) {
    this.drv = drv;
    this.props = props;
    this.context = context;
    this.#dev = dev;
  }

  /** Initialises the driver, retains device `ordinal`'s primary context and makes it current. */
  static open(ordinal: number): CudaDevice {
    const drv = loadDriver();
    check(drv, drv.cuInit(0), 'cuInit');
    const count = out<number>((b) => drv.cuDeviceGetCount(b), drv, 'cuDeviceGetCount', 0);
    if (!Number.isInteger(ordinal) || ordinal < 0 || ordinal >= count) {
      throw new PeregrineError('PGN_ERR_DEVICE_UNAVAILABLE', `CUDA device ${ordinal} does not exist (this machine has ${count})`, { deviceId: ordinal, count });
    }
    const dev = out<number>((b) => drv.cuDeviceGet(b, ordinal), drv, 'cuDeviceGet', 0);
    const attr = (a: number, what: string): number => out<number>((b) => drv.cuDeviceGetAttribute(b, a, dev), drv, `cuDeviceGetAttribute(${what})`, 0);
    const nameBuf = Buffer.alloc(256);
    check(drv, drv.cuDeviceGetName(nameBuf, nameBuf.length, dev), 'cuDeviceGetName');
    const memClockKHz = attr(CU_DEVICE_ATTRIBUTE.MEMORY_CLOCK_RATE, 'memory clock');
    const busBits = attr(CU_DEVICE_ATTRIBUTE.GLOBAL_MEMORY_BUS_WIDTH, 'bus width');
    const props: DeviceProps = {
      ordinal,
      name: nameBuf.toString('utf8').replace(/\0.*$/s, ''),
      computeCapability: [attr(CU_DEVICE_ATTRIBUTE.COMPUTE_CAPABILITY_MAJOR, 'cc major'), attr(CU_DEVICE_ATTRIBUTE.COMPUTE_CAPABILITY_MINOR, 'cc minor')],
      numSMs: attr(CU_DEVICE_ATTRIBUTE.MULTIPROCESSOR_COUNT, 'SM count'),
      totalMemBytes: Number(out<number | bigint>((b) => drv.cuDeviceTotalMem(b, dev), drv, 'cuDeviceTotalMem', 0)),
      l2CacheBytes: attr(CU_DEVICE_ATTRIBUTE.L2_CACHE_SIZE, 'L2 size'),
      maxSharedBytesPerBlock: attr(CU_DEVICE_ATTRIBUTE.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, 'shared memory'),
      peakBandwidthBytesPerSec: memClockKHz * 1000 * 2 * (busBits / 8),
      driverVersion: out<number>((b) => drv.cuDriverGetVersion(b), drv, 'cuDriverGetVersion', 0),
    };
    const ctx = out<Handle>((b) => drv.cuDevicePrimaryCtxRetain(b, dev), drv, 'cuDevicePrimaryCtxRetain', null);
    const device = new CudaDevice(drv, props, ctx, dev);
    device.makeCurrent();
    return device;
  }

  /** sm_XY (with the "a" of Hopper's arch-specific target for 9.0) */
  get smArch(): string {
    const [major, minor] = this.props.computeCapability;
    return `sm_${major}${minor}${major === 9 && minor === 0 ? 'a' : ''}`;
  }

  makeCurrent(): void {
    check(this.drv, this.drv.cuCtxSetCurrent(this.context), 'cuCtxSetCurrent');
  }

  memInfo(): { freeBytes: number; totalBytes: number } {
    const free: (number | bigint)[] = [0];
    const total: (number | bigint)[] = [0];
    check(this.drv, this.drv.cuMemGetInfo(free, total), 'cuMemGetInfo');
    return { freeBytes: Number(free[0]), totalBytes: Number(total[0]) };
  }

  synchronize(): void {
    check(this.drv, this.drv.cuCtxSynchronize(), 'cuCtxSynchronize');
  }

  release(): void {
    if (this.#released) return;
    this.#released = true;
    check(this.drv, this.drv.cuDevicePrimaryCtxRelease(this.#dev), 'cuDevicePrimaryCtxRelease');
  }
}

/** Why CUDA cannot be used here (no driver, no device), or null when it can. Never throws. */
export function cudaUnavailableReason(): string | null {
  try {
    const drv = loadDriver();
    const rc = drv.cuInit(0);
    if (rc !== 0) return `cuInit failed: error ${rc}`;
    const n: number[] = [0];
    const rc2 = drv.cuDeviceGetCount(n);
    if (rc2 !== 0) return `cuDeviceGetCount failed: error ${rc2}`;
    return n[0]! > 0 ? null : 'the driver reports no CUDA device';
  } catch (e) {
    return (e as Error).message.split('\n')[0]!.replace(/ Searched:$/, '');
  }
}
