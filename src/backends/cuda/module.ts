/**
 * Module loading (cuModuleLoadData of a fatbin or cubin) and kernel launch.
 *
 * Each Kernel owns a native argument buffer laid out once from its parameter kinds
 * (values at their natural alignment, then the kernelParams pointer table pointing at
 * them), so a launch only writes the values and calls cuLaunchKernel: no allocation,
 * no marshalling of arrays. cuLaunchKernel copies the values, so reusing the buffer
 * is safe, also while a stream is being captured into a graph.
 *
 * With PDL (pdl.ts: sm_90+, CUDA 12.3+, unless PEREGRINE_PDL=0), launches go through cuLaunchKernelEx with programmatic
 * dependent launch instead (pdl.ts); without it, cuLaunchKernel exactly as before.
 */
import koffi from 'koffi';
import { PeregrineError } from '../../errors.js';
import { check, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, out, type Driver, type Handle } from './driver.js';
import { PDL_AFTER_CUBLAS, PdlLaunch } from './pdl.js';
import type { CudaStream } from './stream.js';

/** How a kernel parameter is passed: device pointers and i64 take 8 bytes, the rest 4. */
export type ParamKind = 'ptr' | 'i64' | 'i32' | 'u32' | 'f32';
export type Dim3 = number | readonly [number, number] | readonly [number, number, number];

const TWO_32 = 2 ** 32;

export class CudaModule {
  readonly #drv: Driver;
  readonly handle: Handle;
  readonly #kernels = new Map<string, Kernel>();
  readonly #pdl: PdlLaunch | null;
  #unloaded = false;

  private constructor(drv: Driver, handle: Handle, pdl: PdlLaunch | null) {
    this.#drv = drv;
    this.handle = handle;
    this.#pdl = pdl;
  }

  static load(drv: Driver, image: Uint8Array, what: string): CudaModule {
    const handle = out<Handle>((b) => drv.cuModuleLoadData(b, image), drv, `cuModuleLoadData(${what})`, null);
    return new CudaModule(drv, handle, PdlLaunch.forCurrentContext(drv));
  }

  /** Whether this module's kernels launch with PDL (sm_90+, not PEREGRINE_PDL=0, and a PDL launch has succeeded). */
  get pdlActive(): boolean {
    return this.#pdl?.active ?? false;
  }

  /** The kernel `name` with parameters `params` (must match the extern "C" signature). */
  kernel(name: string, params: readonly ParamKind[]): Kernel {
    let k = this.#kernels.get(name);
    if (!k) {
      const box: Handle[] = [null];
      const rc = this.#drv.cuModuleGetFunction(box, this.handle, name);
      if (rc !== 0) {
        throw new PeregrineError('PGN_ERR_CUDA', `kernel ${name} is not in the loaded kernel image (rebuild with npm run build:kernels)`, { kernel: name, cudaError: rc });
      }
      k = new Kernel(this.#drv, box[0], name, params, this.#pdl);
      this.#kernels.set(name, k);
    }
    return k;
  }

  unload(): void {
    if (this.#unloaded) return;
    this.#unloaded = true;
    this.#kernels.clear();
    check(this.#drv, this.#drv.cuModuleUnload(this.handle), 'cuModuleUnload');
  }
}

export class Kernel {
  readonly name: string;
  readonly params: readonly ParamKind[];
  readonly #drv: Driver;
  readonly #fn: Handle;
  readonly #offsets: number[];
  readonly #values: DataView;
  readonly #valueBuf: unknown;
  readonly #table: unknown;
  readonly #pdl: PdlLaunch | null;
  #maxDynamicShared = 48 * 1024;

  constructor(drv: Driver, fn: Handle, name: string, params: readonly ParamKind[], pdl: PdlLaunch | null = null) {
    this.#drv = drv;
    this.#fn = fn;
    this.#pdl = pdl;
    this.name = name;
    this.params = params;
    let off = 0;
    this.#offsets = params.map((p) => {
      const size = p === 'ptr' || p === 'i64' ? 8 : 4;
      off = Math.ceil(off / size) * size;
      const at = off;
      off += size;
      return at;
    });
    const valueBytes = Math.max(8, Math.ceil(off / 8) * 8);
    this.#valueBuf = koffi.alloc('uint8_t', valueBytes);
    this.#values = new DataView(koffi.view(this.#valueBuf, valueBytes));
    const numParams = Math.max(1, params.length);
    this.#table = koffi.alloc('uint64_t', numParams);
    const table = new DataView(koffi.view(this.#table, numParams * 8));
    const base = koffi.address(this.#valueBuf);
    this.#offsets.forEach((o, i) => table.setBigUint64(i * 8, base + BigInt(o), true));
  }

  /** Raises the dynamic shared memory this kernel may use (above the default 48 KiB). */
  reserveSharedMemory(bytes: number): void {
    if (bytes <= this.#maxDynamicShared) return;
    check(this.#drv, this.#drv.cuFuncSetAttribute(this.#fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes), `cuFuncSetAttribute(${this.name}, ${bytes} bytes shared)`);
    this.#maxDynamicShared = bytes;
  }

  /** Queues the kernel on `stream`. `args` follow `params`; null is a null pointer. A grid with a zero dimension launches nothing. */
  launch(grid: Dim3, block: Dim3, sharedBytes: number, stream: CudaStream, args: readonly (number | null)[]): void {
    const [gx, gy = 1, gz = 1] = typeof grid === 'number' ? [grid] : grid;
    if (gx === 0 || gy === 0 || gz === 0) return;
    const [bx, by = 1, bz = 1] = typeof block === 'number' ? [block] : block;
    if (args.length !== this.params.length) {
      throw new PeregrineError('PGN_ERR_INTERNAL', `${this.name}: ${args.length} arguments for ${this.params.length} parameters`, { kernel: this.name });
    }
    if (sharedBytes > 48 * 1024) this.reserveSharedMemory(sharedBytes);
    const v = this.#values;
    for (let i = 0; i < args.length; i++) {
      const o = this.#offsets[i]!;
      const a = args[i] ?? 0;
      switch (this.params[i]) {
        case 'ptr':
        case 'i64': {
          const hi = Math.floor(a / TWO_32);
          v.setUint32(o, a - hi * TWO_32, true);
          v.setInt32(o + 4, hi, true);
          break;
        }
        case 'i32': v.setInt32(o, a, true); break;
        case 'u32': v.setUint32(o, a, true); break;
        case 'f32': v.setFloat32(o, a, true); break;
      }
    }
    const pdlRc = this.#pdl && !(stream.afterLibraryKernel && !PDL_AFTER_CUBLAS) ? this.#pdl.launch(this.#fn, gx, gy, gz, bx, by, bz, sharedBytes, stream.handle, this.#table, this.name) : null;
    stream.afterLibraryKernel = false;
    const rc = pdlRc ?? this.#drv.cuLaunchKernel(this.#fn, gx, gy, gz, bx, by, bz, sharedBytes, stream.handle, this.#table, null);
    if (rc !== 0) check(this.#drv, rc, `${pdlRc === null ? 'cuLaunchKernel' : 'cuLaunchKernelEx'}(${this.name}, grid [${gx}, ${gy}, ${gz}], block [${bx}, ${by}, ${bz}], ${sharedBytes} B shared)`);
  }
}
