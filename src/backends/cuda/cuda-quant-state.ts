/**
 * What the quantized linears' files (cuda-quant.ts: dispatch and the GEMVs; cuda-quant-fp8.ts: FP8 activations and
 * GEMMs; cuda-quant-dequant.ts: the dequantizing fallback) share: their sizes and kernel parameter lists, the
 * per-backend state (scratch that only grows, per-weight FP8 copies, the cuBLASLt plans), a checked call, and what
 * tests force.
 */
import type { QuantizedWeight } from '../backend.js';
import type { CudaBackend } from './cuda-backend.js';
import { QuantGemm, type Fp8Scaling } from './cuda-quant-gemm.js';
import { QGEMV_PARAMS } from './cuda-quant-gemv.js';
import type { CudaTensor } from './cuda-tensor.js';
import type { Kernel, ParamKind } from './module.js';

export type QuantPath = 'qgemv' | 'mma' | 'cublas' | 'gemv' | 'igemm' | 'dequant';

/**
 * int8 / int4: most tokens for the GEMV (H100, 8B shapes: at 4 and 8 tokens it beats dequantized tiles + GEMM
 * on gate_up 2.7x / 1.6x, and is even with it on o_proj / down_proj at 8)
 */
export const INT_GEMV_MAX_M = 8;
/** fp8: most tokens for the tensor-core GEMV (H100: ahead of cuBLASLt at 1 token, behind at 16) */
export const FP8_MMA_MAX_M = 8;
export const GEMV_KERNEL_MAX_M = 8;
/** quant_fp8_mma takes two 8-token tiles */
export const MMA_KERNEL_MAX_M = 16;
/** bytes of one dequantized weight tile (fits the 50 MiB L2 of an H100 with the GEMM's operands) */
export const TILE_BYTES = 32 << 20;
/** tile rows are a multiple of this, so each tile's output columns start 256-byte aligned */
export const TILE_ROW_ALIGN = 128;
/** f32 scratch for unscaled FP8 products, filled in chunks of tokens */
export const ACC_BYTES = 64 << 20;
export const GEMM_WORKSPACE_BYTES = 32 << 20;
export const THREADS = 256;
/** quant_fp8_rows: 16-byte units a thread holds, threads a block has at most */
export const ROWS_UNITS = 8;
export const ROWS_MAX_THREADS = 1024;
export const GEMV_WARPS = 4;
/** quant_gemv's rows per warp */
export const GEMV_ROWS_PER_WARP = 2;
export const MMA_ROWS_PER_BLOCK = 16;
export const KIND_CODE = { fp8: 0, int8: 1, int4: 2 } as const;
export const VALUES_PER_WORD = { fp8: 4, int8: 4, int4: 8 } as const;
/** values per 16-byte chunk of a GEMV lane */
export const GEMV_CHUNK = { int8: 16, int4: 32 } as const;

const p = 'ptr' as const, i32 = 'i32' as const, i64 = 'i64' as const, u32 = 'u32' as const, f32 = 'f32' as const;
/** parameter lists of kernels/quant.cu, by kernel name prefix */
const PARAMS = {
  quant_fp8_act: [p, p, p, p, p, i32, f32], // (xq, rowScales, xfq, x, inputScale, K, minScale)
  quant_fp8_rows: [p, p, p, p, i32, f32], // (xq, rowScales, x, inputScale, K, minScale)
  qgemv: QGEMV_PARAMS,
  quant_dequant: [p, p, p, p, i32, i32, i32, i32, i32, i32], // (out, qw, scales, zeros, kind, n0, rows, K, groupSize, perTensor)
  quant_dequant16: [p, p, p, p, i32, i32, i32, i32, i32, i32], // the same, a thread per 16 bytes of codes
  quant_igemm: [p, p, p, p, p, p, i32, i32, i32, i32, i32, i32], // (out, x, qw, scales, zeros, bias, M, N, K, groupSize, outKind, biasKind)
  quant_gemv: [p, p, p, p, p, p, i32, i32, i32, i32, i32, i32], // (out, x, qw, scales, zeros, bias, M, N, K, groupSize, outKind, biasKind)
  quant_fp8_mma: [p, p, p, p, p, i32, p, i32, i32, i32, i32, i32], // (out, xq, xs, w, ws, wsPerTensor, bias, M, N, K, outKind, biasKind)
  quant_scale_out: [p, p, i32, p, p, i32, p, i32, i32, i32, i32], // (out, acc, ldAcc, xs, ws, wsPerTensor, bias, M, N, outKind, biasKind)
  quant_bias_add: [p, p, i32, i32, i32, i32], // (out, bias, M, N, outKind, biasKind)
  quant_fill_f32: [p, p, i32], // (out, src, n)
  quant_fill_codes: [p, i64, u32, u32], // (out, n, seed, mask)
  quant_fp8_amax: [p, p, i64], // (amaxBits, x, n)
  quant_fp8_tensor_scale: [p, p, f32], // (scale, amaxBits, minScale)
} as const satisfies Record<string, readonly ParamKind[]>;

/** What tests and benchmarks force (forceQuantPath, forceFp8Scaling); null: the dispatch chooses. */
export const quantForced: { path: QuantPath | null; scaling: Fp8Scaling | null } = { path: null, scaling: null };

/** Tests and benchmarks: run every quantized linear through `path` (it must suit the call), or null to choose. */
export function forceQuantPath(path: QuantPath | null): void {
  quantForced.path = path;
}

/**
 * Tests and benchmarks: the FP8 cuBLASLt scaling to use ('none' = f32 scratch + epilogue), or null to choose;
 * a forced 'outer-vec' or 'scalar' (with fp8TensorActivations) the library refuses throws, naming why.
 */
export function forceFp8Scaling(scaling: Fp8Scaling | null): void {
  quantForced.scaling = scaling;
}

/** A device buffer that only grows, for one backend's quantized linears. */
class GrowBuffer {
  ptr = 0;
  bytes = 0;
}

export class QuantState {
  readonly be: CudaBackend;
  readonly buffers = new Map<string, GrowBuffer>();
  /** retired buffers and per-weight copies, freed by disposeQuant */
  readonly owned: number[] = [];
  readonly fp8 = new WeakMap<QuantizedWeight, Fp8Prep>();
  /** cuBLASLt has not refused outer-vector FP8 scaling yet (cuBLAS 13.1 on an H100 does refuse it) */
  outerVec = true;
  #gemm: QuantGemm | null = null;

  constructor(be: CudaBackend) {
    this.be = be;
  }

  get gemm(): QuantGemm {
    if (!this.#gemm) {
      const ws = this.alloc(GEMM_WORKSPACE_BYTES);
      this.#gemm = new QuantGemm(ws, GEMM_WORKSPACE_BYTES, Math.floor(this.be.props.driverVersion / 1000));
    }
    return this.#gemm;
  }

  alloc(bytes: number): number {
    const ptr = this.be.allocator.alloc(bytes);
    this.owned.push(ptr);
    return ptr;
  }

  buf(name: string, bytes: number): number {
    let b = this.buffers.get(name);
    if (!b) this.buffers.set(name, (b = new GrowBuffer()));
    if (bytes > b.bytes) {
      if (b.ptr) this.owned.push(b.ptr);
      b.bytes = Math.max(bytes, Math.ceil(b.bytes * 1.5));
      b.ptr = this.be.allocator.alloc(b.bytes);
    }
    return b.ptr;
  }

  kernel(prefix: keyof typeof PARAMS, suffix = ''): Kernel {
    return this.be.kernels.module.kernel(suffix ? `${prefix}_${suffix}` : prefix, PARAMS[prefix]);
  }

  dispose(): void {
    this.#gemm?.dispose();
    this.#gemm = null;
    for (const b of this.buffers.values()) if (b.ptr) this.be.allocator.free(b.ptr);
    for (const ptr of this.owned) this.be.allocator.free(ptr);
    this.buffers.clear();
    this.owned.length = 0;
  }
}

export interface Fp8Prep {
  /** E4M3 [Npad, K]: the weight's own words, or a zero-padded copy */
  readonly w: number;
  readonly Npad: number;
  /** f32 [N] weight scales for outer-vector scaling (made on first use) */
  scaleVector: number | null;
}

const states = new WeakMap<CudaBackend, QuantState>();

export function stateOf(be: CudaBackend): QuantState {
  let st = states.get(be);
  if (!st) states.set(be, (st = new QuantState(be)));
  return st;
}

/** Frees what the quantized linears of `be` hold (scratch, cached weight copies, the cuBLASLt handle). */
export function disposeQuant(be: CudaBackend): void {
  states.get(be)?.dispose();
  states.delete(be);
}

/** A checked call: tensors as CUDA tensors and the sizes every path needs. */
export interface Call {
  readonly w: QuantizedWeight;
  readonly out: CudaTensor;
  readonly x: CudaTensor;
  readonly bias: CudaTensor | null;
  readonly qweight: CudaTensor;
  readonly scales: CudaTensor;
  readonly zeros: CudaTensor | null;
  readonly inputScale: CudaTensor | null;
  /** fp8: x as the fused norm quantized it (codes [>= M, K/4] 16-byte aligned, scales [>= M]) */
  readonly xq: { readonly codes: CudaTensor; readonly scales: CudaTensor } | null;
  readonly M: number;
  readonly N: number;
  readonly K: number;
  readonly perTensor: boolean;
  readonly outKind: number;
  readonly biasKind: number;
}

/** E4M3 activations of a call: codes [M, K] bytes and per-token scales [M] (device addresses). */
export interface QuantizedX {
  readonly xq: number;
  readonly xs: number;
}

export function blocksFor(st: QuantState, work: number): number {
  return Math.max(1, Math.min(Math.ceil(work / THREADS), st.be.props.numSMs * 16));
}

