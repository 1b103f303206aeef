/**
 * Shared pieces of the CUDA suites: the backends (CUDA under test, CPU reference), fresh
 * random inputs rounded to the tested dtype (both backends see the same values), poisoned
 * outputs, and the comparison by relative L2 error.
 */
import assert from 'node:assert/strict';
import type { DType, Tensor } from '../../src/backends/backend.js';
import { CpuBackend, cpuData } from '../../src/backends/cpu/cpu-backend.js';
import { CudaBackend } from '../../src/backends/cuda/cuda-backend.js';
import { loadDriver, out } from '../../src/backends/cuda/driver.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../../src/weights/dtype.js';
import { rng, shuffled } from '../helpers/random.js';

export { rng, shuffled };

/** relative L2 error allowed per output dtype */
export const TOL: Record<DType, number> = { f32: 2e-5, bf16: 1e-2, f16: 2e-3, i32: 0 };

/** GPUs the driver sees (0 without a GPU): the multi-GPU suites skip below their count. */
export function gpuCount(): number {
  if (!CudaBackend.isAvailable()) return 0;
  const drv = loadDriver();
  drv.cuInit(0);
  return out<number>((b) => drv.cuDeviceGetCount(b), drv, 'cuDeviceGetCount', 0);
}

export const SEED = Number(process.env.PEREGRINE_TEST_SEED ?? Math.floor(Math.random() * 2 ** 31));


/** Rounds every value to what `dtype` stores. */
export function roundTo(data: Float32Array, dtype: DType): Float32Array {
  if (dtype === 'bf16') return data.map((x) => bf16ToF32(f32ToBf16(x)));
  if (dtype === 'f16') return data.map((x) => f16ToF32(f32ToF16(x)));
  return data;
}


/** A tensor on both backends holding the same values. */
export interface Pair {
  readonly cpu: Tensor;
  readonly gpu: Tensor;
  readonly dtype: DType;
}

export class Harness {
  readonly gpu: CudaBackend;
  readonly cpu = new CpuBackend();
  readonly r: () => number;
  readonly #owned: Tensor[] = [];

  constructor(gpu: CudaBackend, seed: number) {
    this.gpu = gpu;
    this.r = rng(seed);
  }

  uniform(n: number, scale = 1): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = (this.r() * 2 - 1) * scale;
    return out;
  }

  /** Random values (uniform in [-scale, scale]) rounded to `dtype`, on both backends. */
  rand(shape: readonly number[], dtype: DType, scale = 1): Pair {
    return this.fromF32(shape, this.uniform(shape.reduce((a, b) => a * b, 1), scale), dtype);
  }

  fromF32(shape: readonly number[], data: Float32Array, dtype: DType): Pair {
    const rounded = roundTo(data, dtype);
    const gpu = this.gpu.fromF32(shape, rounded, dtype);
    this.#owned.push(gpu);
    return { cpu: this.cpu.fromF32(shape, rounded), gpu, dtype };
  }

  ints(shape: readonly number[], data: Int32Array): Pair {
    const gpu = this.gpu.fromI32(shape, data);
    this.#owned.push(gpu);
    return { cpu: this.cpu.fromI32(shape, data), gpu, dtype: 'i32' };
  }

  /** An output pair: the GPU side poisoned with NaN so that unwritten elements show. */
  output(shape: readonly number[], dtype: DType): Pair {
    const n = shape.reduce((a, b) => a * b, 1);
    const gpu = this.gpu.fromF32(shape, new Float32Array(n).fill(NaN), dtype);
    this.#owned.push(gpu);
    return { cpu: this.cpu.empty(shape, 'f32'), gpu, dtype };
  }

  /** Asserts the first `count` elements (default all) agree within the dtype's tolerance. */
  async expectClose(p: Pair, what: string, count?: number, tol = TOL[p.dtype]): Promise<void> {
    const got = await this.gpu.downloadF32(p.gpu);
    const want = cpuData(p.cpu) as Float32Array;
    const n = count ?? want.length;
    let errSq = 0;
    let refSq = 0;
    let worst = -1;
    let worstErr = -1;
    for (let i = 0; i < n; i++) {
      if (!Number.isFinite(got[i]!)) assert.fail(`${what}: element ${i} is ${got[i]} (expected ${want[i]}; seed ${SEED})`);
      const d = got[i]! - want[i]!;
      errSq += d * d;
      refSq += want[i]! * want[i]!;
      if (Math.abs(d) > worstErr) { worstErr = Math.abs(d); worst = i; }
    }
    const rel = Math.sqrt(errSq / Math.max(refSq, 1e-30));
    if (!(rel <= tol)) {
      assert.fail(`${what}: relative L2 error ${rel.toExponential(2)} > ${tol} (worst element ${worst}: ${got[worst]} vs ${want[worst]}; seed ${SEED})`);
    }
  }

  dispose(): void {
    for (const t of this.#owned) this.gpu.free(t);
    this.#owned.length = 0;
  }
}

/** The backend for a whole test file, or the reason there is none. */
export function openCuda(): { gpu: CudaBackend | null; reason: string | null } {
  const reason = CudaBackend.unavailableReason();
  if (reason !== null) return { gpu: null, reason };
  return { gpu: CudaBackend.create({ deviceId: Number(process.env.PEREGRINE_CUDA_DEVICE ?? 0) }), reason: null };
}
