/**
 * cuBLASLt GEMMs for quantized linears, beside cublaslt.ts's plain ones (same TN layout: A = w [N, K]
 * row-major read as K x N transposed, B = x [M, K] as K x M, D = out as N x M with leading dimension ldOut):
 * - FP8: E4M3 x E4M3 with f32 accumulation. 'outer-vec' scaling multiplies D[n, m] by aScale[n] (weight, per
 *   channel) and bScale[m] (activation, per token) inside cuBLASLt (CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F,
 *   cuBLAS >= 12.9); 'none' leaves the product unscaled for our epilogue kernel.
 * - half: bf16 / f16 operands whose output is a column block of a wider matrix (ldOut >= N): the tiles of
 *   dequantized weights.
 * A plan (descriptor, layouts, heuristic algorithm) per configuration and shape. A configuration the library
 * refuses (attribute, heuristic or first matmul) is remembered and `fp8` returns false, so the caller falls back.
 */
import koffi from 'koffi';
import { PeregrineError } from '../../errors.js';
import type { DevicePtr, Handle } from './driver.js';
import { loadLt } from './cublaslt.js';

type Lt = ReturnType<typeof loadLt>;
import type { CudaStream } from './stream.js';

export type OutDtype = 'f32' | 'bf16' | 'f16';
/** 'scalar': one f32 scale each for A (weight) and B (activation), cuBLASLt's default scale mode */
export type Fp8Scaling = 'outer-vec' | 'scalar' | 'none';

const CUDA_R = { f32: 0, f16: 2, bf16: 14, e4m3: 28 } as const;
const CUBLAS_COMPUTE_32F = 68;
const DESC = { TRANSA: 3, TRANSB: 4, A_SCALE_POINTER: 17, B_SCALE_POINTER: 18, A_SCALE_MODE: 31, B_SCALE_MODE: 32 } as const;
const MATRIX_SCALE_OUTER_VEC_32F = 3;
const PREF = { MAX_WORKSPACE_BYTES: 1, MIN_ALIGNMENT_A: 5, MIN_ALIGNMENT_B: 6, MIN_ALIGNMENT_C: 7, MIN_ALIGNMENT_D: 8 } as const;
const CUBLAS_OP_N = 0;
const CUBLAS_OP_T = 1;
const HEURISTIC_RESULT_BYTES = 96;
const MAX_PLANS = 512;
/** cuBLASLt's default minimum pointer alignment; plans for less aligned pointers ask for 16 */
const FULL_ALIGNMENT = 256;
const MIN_ALIGNMENT = 16;


export interface Fp8GemmArgs {
  readonly out: DevicePtr;
  readonly outDtype: OutDtype;
  readonly ldOut: number;
  /** E4M3 [M, K] */
  readonly xq: DevicePtr;
  /** E4M3 [N, K] */
  readonly w: DevicePtr;
  readonly M: number;
  readonly N: number;
  readonly K: number;
  readonly scaling: Fp8Scaling;
  /** outer-vec: f32 [N] weight scales and f32 [M] token scales */
  readonly aScale: DevicePtr;
  readonly bScale: DevicePtr;
}

export interface HalfGemmArgs {
  readonly out: DevicePtr;
  readonly outDtype: OutDtype;
  readonly ldOut: number;
  readonly x: DevicePtr;
  readonly w: DevicePtr;
  readonly dtype: 'bf16' | 'f16';
  readonly M: number;
  readonly N: number;
  readonly K: number;
}

interface Plan {
  readonly desc: Handle;
  readonly layouts: readonly [Handle, Handle, Handle];
  readonly algo: unknown;
  readonly workspaceBytes: number;
  /** a matmul with this plan has succeeded */
  proven: boolean;
}

export class QuantGemm {
  readonly #lt: Lt;
  readonly #handle: Handle;
  readonly #workspace: DevicePtr;
  readonly #workspaceBytes: number;
  readonly #plans = new Map<string, Plan>();
  /** configurations the library refused, by plan key */
  readonly #refused = new Set<string>();
  /** why the last refused configuration was refused (the step of cuBLASLt that said no), for error messages */
  lastRefusal: string | null = null;
  readonly #alpha: unknown;
  readonly #beta: unknown;
  readonly #i32: unknown;
  readonly #i32View: DataView;
  readonly #u64: unknown;
  readonly #u64View: DataView;
  #disposed = false;

  constructor(workspace: DevicePtr, workspaceBytes: number, driverMajor: number) {
    this.#lt = loadLt(driverMajor);
    this.#workspace = workspace;
    this.#workspaceBytes = workspaceBytes;
    const box: Handle[] = [null];
    this.#check(this.#lt.cublasLtCreate(box), 'cublasLtCreate');
    this.#handle = box[0];
    this.#alpha = koffi.alloc('float', 1);
    this.#beta = koffi.alloc('float', 1);
    new DataView(koffi.view(this.#alpha, 4)).setFloat32(0, 1, true);
    new DataView(koffi.view(this.#beta, 4)).setFloat32(0, 0, true);
    this.#i32 = koffi.alloc('int32_t', 1);
    this.#i32View = new DataView(koffi.view(this.#i32, 4));
    this.#u64 = koffi.alloc('uint64_t', 1);
    this.#u64View = new DataView(koffi.view(this.#u64, 8));
  }

  /** Queues the FP8 GEMM; false (nothing queued) when cuBLASLt refuses this configuration. */
  fp8(a: Fp8GemmArgs, stream: CudaStream): boolean {
    const align = alignmentOf(a.out, a.xq, a.w, a.ldOut * bytesOf(a.outDtype), a.K);
    const key = `fp8:${a.scaling}:${a.outDtype}:${a.M}:${a.N}:${a.K}:${a.ldOut}:${align}`;
    if (this.#refused.has(key)) return false;
    const plan = this.#plan(key, a.M, a.N, a.K, a.ldOut, 'e4m3', a.outDtype, a.scaling, align);
    if (!plan) return false;
    if (a.scaling === 'outer-vec' || a.scaling === 'scalar') {
      this.#setU64(plan.desc, DESC.A_SCALE_POINTER, a.aScale);
      this.#setU64(plan.desc, DESC.B_SCALE_POINTER, a.bScale);
    }
    const rc = this.#matmul(plan, a.w, a.xq, a.out, stream);
    if (rc === 0) {
      plan.proven = true;
      return true;
    }
    if (plan.proven) this.#check(rc, `cublasLtMatmul(fp8 ${a.scaling}, M=${a.M}, N=${a.N}, K=${a.K})`);
    this.lastRefusal = `cublasLtMatmul returned ${this.#lt.cublasLtGetStatusName(rc) ?? 'CUBLAS_STATUS'} (${rc}) for ${key}`;
    this.#drop(key, plan);
    return false;
  }

  /** Queues out[:, 0..N) (leading dimension ldOut) = x @ w^T for half operands; throws PGN_ERR_CUBLAS. */
  half(a: HalfGemmArgs, stream: CudaStream): void {
    const align = alignmentOf(a.out, a.x, a.w, a.ldOut * bytesOf(a.outDtype), a.K * 2);
    const key = `${a.dtype}:${a.outDtype}:${a.M}:${a.N}:${a.K}:${a.ldOut}:${align}`;
    const plan = this.#plan(key, a.M, a.N, a.K, a.ldOut, a.dtype, a.outDtype, 'none', align);
    if (!plan) throw new PeregrineError('PGN_ERR_CUBLAS', `cuBLASLt has no algorithm for M=${a.M} N=${a.N} K=${a.K} (${a.dtype} -> ${a.outDtype}, ld ${a.ldOut})`, { M: a.M, N: a.N, K: a.K });
    const rc = this.#matmul(plan, a.w, a.x, a.out, stream);
    if (rc !== 0) this.#check(rc, `cublasLtMatmul(${a.dtype}, M=${a.M}, N=${a.N}, K=${a.K}, ld ${a.ldOut})`);
    plan.proven = true;
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const p of this.#plans.values()) this.#destroyPlan(p);
    this.#plans.clear();
    this.#lt.cublasLtDestroy(this.#handle);
    for (const p of [this.#alpha, this.#beta, this.#i32, this.#u64]) koffi.free(p);
  }

  #matmul(plan: Plan, w: DevicePtr, x: DevicePtr, out: DevicePtr, stream: CudaStream): number {
    return this.#lt.cublasLtMatmul(
      this.#handle, plan.desc, this.#alpha, w, plan.layouts[0], x, plan.layouts[1], this.#beta,
      out, plan.layouts[2], out, plan.layouts[2], plan.algo, this.#workspace, plan.workspaceBytes, stream.handle,
    ) as number;
  }

  /** The plan of `key`, made on first use; null (and remembered) when cuBLASLt refuses it. */
  #plan(key: string, M: number, N: number, K: number, ldOut: number, inType: 'e4m3' | 'bf16' | 'f16', outDtype: OutDtype, scaling: Fp8Scaling, align: number): Plan | null {
    const hit = this.#plans.get(key);
    if (hit) return hit;
    if (this.#refused.has(key)) return null;
    const lt = this.#lt;
    const descBox: Handle[] = [null];
    this.#check(lt.cublasLtMatmulDescCreate(descBox, CUBLAS_COMPUTE_32F, CUDA_R.f32), 'cublasLtMatmulDescCreate');
    const desc = descBox[0];
    const layouts: Handle[] = [];
    const results = koffi.alloc('uint8_t', HEURISTIC_RESULT_BYTES);
    const fail = (step: string): null => {
      this.lastRefusal = `${step} refused ${key}`;
      this.#destroyPlan({ desc, layouts: layouts as unknown as Plan['layouts'], algo: results, workspaceBytes: 0, proven: false });
      this.#refused.add(key);
      return null;
    };
    const set = (attr: number, value: number): boolean => {
      this.#i32View.setInt32(0, value, true);
      return lt.cublasLtMatmulDescSetAttribute(desc, attr, this.#i32, 4) === 0;
    };
    if (!set(DESC.TRANSA, CUBLAS_OP_T) || !set(DESC.TRANSB, CUBLAS_OP_N)) return fail('cublasLtMatmulDescSetAttribute(TRANSA/TRANSB)');
    if (scaling === 'outer-vec' && (!set(DESC.A_SCALE_MODE, MATRIX_SCALE_OUTER_VEC_32F) || !set(DESC.B_SCALE_MODE, MATRIX_SCALE_OUTER_VEC_32F))) return fail('cublasLtMatmulDescSetAttribute(A/B_SCALE_MODE outer-vec)');
    // the heuristic picks among kernels that apply scales only when the descriptor has scale pointers at query
    // time (an algorithm chosen without them answers NOT_SUPPORTED at the matmul): any device address serves
    // here, every matmul sets the real ones
    if (scaling !== 'none') {
      this.#setU64(desc, DESC.A_SCALE_POINTER, this.#workspace);
      this.#setU64(desc, DESC.B_SCALE_POINTER, this.#workspace);
    }
    for (const [type, rows, cols, ld] of [[CUDA_R[inType], K, N, K], [CUDA_R[inType], K, M, K], [CUDA_R[outDtype], N, M, ldOut]] as const) {
      const box: Handle[] = [null];
      if (lt.cublasLtMatrixLayoutCreate(box, type, rows, cols, ld) !== 0) return fail('cublasLtMatrixLayoutCreate');
      layouts.push(box[0]);
    }
    const prefBox: Handle[] = [null];
    this.#check(lt.cublasLtMatmulPreferenceCreate(prefBox), 'cublasLtMatmulPreferenceCreate');
    const pref = prefBox[0];
    this.#u64View.setBigUint64(0, BigInt(this.#workspaceBytes), true);
    lt.cublasLtMatmulPreferenceSetAttribute(pref, PREF.MAX_WORKSPACE_BYTES, this.#u64, 8);
    if (align < FULL_ALIGNMENT) {
      this.#i32View.setUint32(0, align, true);
      for (const attr of [PREF.MIN_ALIGNMENT_A, PREF.MIN_ALIGNMENT_B, PREF.MIN_ALIGNMENT_C, PREF.MIN_ALIGNMENT_D]) lt.cublasLtMatmulPreferenceSetAttribute(pref, attr, this.#i32, 4);
    }
    const returned: number[] = [0];
    const rc = lt.cublasLtMatmulAlgoGetHeuristic(this.#handle, desc, layouts[0], layouts[1], layouts[2], layouts[2], pref, 1, results, returned);
    lt.cublasLtMatmulPreferenceDestroy(pref);
    if (rc !== 0 || returned[0] === 0) return fail(rc !== 0 ? `cublasLtMatmulAlgoGetHeuristic (${lt.cublasLtGetStatusName(rc) ?? rc})` : 'cublasLtMatmulAlgoGetHeuristic (no algorithm)');
    const view = new DataView(koffi.view(results, HEURISTIC_RESULT_BYTES));
    const plan: Plan = { desc, layouts: layouts as unknown as Plan['layouts'], algo: results, workspaceBytes: Math.min(Number(view.getBigUint64(64, true)), this.#workspaceBytes), proven: false };
    if (this.#plans.size >= MAX_PLANS) {
      const [oldKey, old] = this.#plans.entries().next().value as [string, Plan];
      this.#plans.delete(oldKey);
      this.#destroyPlan(old);
    }
    this.#plans.set(key, plan);
    return plan;
  }

  #drop(key: string, plan: Plan): void {
    this.#plans.delete(key);
    this.#destroyPlan(plan);
    this.#refused.add(key);
  }

  #destroyPlan(p: Plan): void {
    this.#lt.cublasLtMatmulDescDestroy(p.desc);
    for (const l of p.layouts) this.#lt.cublasLtMatrixLayoutDestroy(l);
    koffi.free(p.algo);
  }

  #setU64(desc: Handle, attr: number, value: number): void {
    this.#u64View.setBigUint64(0, BigInt(value), true);
    this.#check(this.#lt.cublasLtMatmulDescSetAttribute(desc, attr, this.#u64, 8), `cublasLtMatmulDescSetAttribute(${attr})`);
  }

  #check(status: number, call: string): void {
    if (status !== 0) throw new PeregrineError('PGN_ERR_CUBLAS', `${call} failed: ${this.#lt.cublasLtGetStatusName(status) ?? 'CUBLAS_STATUS'} (${status})`, { call, status });
  }
}

function bytesOf(d: OutDtype): number {
  return d === 'f32' ? 4 : 2;
}

/** 256 when every pointer and row pitch is 256-byte aligned, else 16 (the callers guarantee 16). */
function alignmentOf(...values: number[]): number {
  return values.every((v) => v % FULL_ALIGNMENT === 0) ? FULL_ALIGNMENT : MIN_ALIGNMENT;
}
