/**
 * cuBLASLt GEMMs for quantized linears, beside cublaslt.ts's plain ones (same TN layout: A = w [N, K]
 * row-major read as K x N transposed, B = x [M, K] as K x M, D = out as N x M with leading dimension ldOut):
 * - FP8: E4M3 x E4M3 with f32 accumulation. 'outer-vec' scaling multiplies D[n, m] by aScale[n] (weight, per
 *   channel) and bScale[m] (activation, per token) inside cuBLASLt (CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F,
 *   cuBLAS >= 12.9); 'none' leaves the product unscaled for our epilogue kernel.
 * - half: bf16 / f16 operands whose output is a column block of a wider matrix (ldOut >= N): the tiles of
 *   dequantized weights.
 * A plan (lt-plans.ts: descriptor, layouts, heuristic algorithm) per configuration and shape. A configuration the
 * library refuses (attribute, heuristic or first matmul) is remembered and `fp8` returns false, so the caller falls back.
 */
import { PeregrineError } from '../../errors.js';
import type { DevicePtr } from './driver.js';
import { CUDA_R, DESC, isRefusal, LtPlans, type DescAttr, type LtPlan, type PlanSpec } from './lt-plans.js';
import type { CudaStream } from './stream.js';

export type OutDtype = 'f32' | 'bf16' | 'f16';
/** 'scalar': one f32 scale each for A (weight) and B (activation), cuBLASLt's default scale mode */
export type Fp8Scaling = 'outer-vec' | 'scalar' | 'none';

const MATRIX_SCALE_OUTER_VEC_32F = 3;
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

export class QuantGemm {
  readonly #lt: LtPlans;
  /** configurations the library refused, by plan key */
  readonly #refused = new Set<string>();
  /** why the last refused configuration was refused (the step of cuBLASLt that said no), for error messages */
  lastRefusal: string | null = null;

  constructor(workspace: DevicePtr, workspaceBytes: number, driverMajor: number) {
    this.#lt = new LtPlans(workspace, workspaceBytes, driverMajor);
  }

  /** Queues the FP8 GEMM; false (nothing queued) when cuBLASLt refuses this configuration. */
  fp8(a: Fp8GemmArgs, stream: CudaStream): boolean {
    const align = alignmentOf(a.out, a.xq, a.w, a.ldOut * bytesOf(a.outDtype), a.K);
    const key = `fp8:${a.scaling}:${a.outDtype}:${a.M}:${a.N}:${a.K}:${a.ldOut}:${align}`;
    if (this.#refused.has(key)) return false;
    const plan = this.#plan(key, () => ({ ...shape(a, CUDA_R.e4m3, align), attrs: this.#scaleAttrs(a.scaling) }));
    if (!plan) return false;
    if (a.scaling === 'outer-vec' || a.scaling === 'scalar') {
      this.#lt.setPointer(plan, DESC.A_SCALE_POINTER, a.aScale);
      this.#lt.setPointer(plan, DESC.B_SCALE_POINTER, a.bScale);
    }
    const rc = this.#lt.matmul(plan, a.w, a.xq, a.out, stream);
    if (rc === 0) {
      plan.proven = true;
      return true;
    }
    if (plan.proven) this.#lt.check(rc, `cublasLtMatmul(fp8 ${a.scaling}, M=${a.M}, N=${a.N}, K=${a.K})`);
    this.lastRefusal = `cublasLtMatmul returned ${this.#lt.statusName(rc)} (${rc}) for ${key}`;
    this.#lt.drop(key);
    this.#refused.add(key);
    return false;
  }

  /** Queues out[:, 0..N) (leading dimension ldOut) = x @ w^T for half operands; throws PGN_ERR_CUBLAS. */
  half(a: HalfGemmArgs, stream: CudaStream): void {
    const align = alignmentOf(a.out, a.x, a.w, a.ldOut * bytesOf(a.outDtype), a.K * 2);
    const key = `${a.dtype}:${a.outDtype}:${a.M}:${a.N}:${a.K}:${a.ldOut}:${align}`;
    const plan = this.#plan(key, () => ({ ...shape(a, CUDA_R[a.dtype], align), attrs: [] }));
    if (!plan) throw new PeregrineError('PGN_ERR_CUBLAS', `cuBLASLt has no algorithm for M=${a.M} N=${a.N} K=${a.K} (${a.dtype} -> ${a.outDtype}, ld ${a.ldOut})`, { M: a.M, N: a.N, K: a.K });
    const rc = this.#lt.matmul(plan, a.w, a.x, a.out, stream);
    if (rc !== 0) this.#lt.check(rc, `cublasLtMatmul(${a.dtype}, M=${a.M}, N=${a.N}, K=${a.K}, ld ${a.ldOut})`);
    plan.proven = true;
  }

  dispose(): void {
    this.#lt.dispose();
  }

  /** The plan of `key`, made from `spec()` on first use; null (and remembered) when cuBLASLt refuses it. */
  #plan(key: string, spec: () => PlanSpec): LtPlan | null {
    const hit = this.#lt.get(key);
    if (hit) return hit;
    if (this.#refused.has(key)) return null;
    const made = this.#lt.makePlan(spec());
    if (isRefusal(made)) {
      this.lastRefusal = `${made.reason} refused ${key}`;
      this.#refused.add(key);
      return null;
    }
    return this.#lt.add(key, made);
  }

  #scaleAttrs(scaling: Fp8Scaling): DescAttr[] {
    const attrs: DescAttr[] = [];
    if (scaling === 'outer-vec') {
      for (const attr of [DESC.A_SCALE_MODE, DESC.B_SCALE_MODE]) attrs.push({ name: 'A/B_SCALE_MODE outer-vec', attr, value: MATRIX_SCALE_OUTER_VEC_32F, bytes: 4 });
    }
    // the heuristic picks among kernels that apply scales only when the descriptor has scale pointers at query
    // time (an algorithm chosen without them answers NOT_SUPPORTED at the matmul): any device address serves
    // here, every matmul sets the real ones
    if (scaling !== 'none') {
      for (const attr of [DESC.A_SCALE_POINTER, DESC.B_SCALE_POINTER]) attrs.push({ name: 'A/B_SCALE_POINTER', attr, value: this.#lt.workspace, bytes: 8 });
    }
    return attrs;
  }
}

/** The PlanSpec of a GEMM but its attributes; alignment below 256 is asked of cuBLASLt. */
function shape(a: { M: number; N: number; K: number; ldOut: number; outDtype: OutDtype }, inType: number, align: number): Omit<PlanSpec, 'attrs'> {
  return { inType, outType: CUDA_R[a.outDtype], M: a.M, N: a.N, K: a.K, ldOut: a.ldOut, minAlignmentBytes: align < FULL_ALIGNMENT ? align : undefined };
}

function bytesOf(d: OutDtype): number {
  return d === 'f32' ? 4 : 2;
}

/** 256 when every pointer and row pitch is 256-byte aligned, else 16 (the callers guarantee 16). */
function alignmentOf(...values: number[]): number {
  return values.every((v) => v % FULL_ALIGNMENT === 0) ? FULL_ALIGNMENT : MIN_ALIGNMENT;
}
