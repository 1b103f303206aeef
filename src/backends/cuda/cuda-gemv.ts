/**
 * Decode-shaped linears on our own kernel (kernels/gemv.cu) instead of cuBLASLt:
 * out [M, N] = x [M, K] @ w [N, K]^T (+ bias [N]) for M <= 16 rows of x, bf16/f16 operands,
 * f32 accumulation on tensor cores, out in the operand dtype or f32 (logits). Every weight
 * byte is read once with 16-byte loads; a block owns 16 weight rows and splits K over its
 * 8 warps, so even N = 4096 puts 2048 warps of loads in flight.
 *
 * Which linears it takes is measured, not derived (H100, NOTES.md): up to 8 rows, weights of
 * at most 64 MiB (o_proj 1.10x cuBLASLt, qkv_proj 1.01x) and f32-out LM heads (1.01-1.02x).
 * cuBLASLt keeps the large FFN weights (it reaches 90-96% of copy bandwidth there, the GEMV
 * 84-92%) and every linear of more than 8 rows (at 16 rows the GEMV is 6-34% slower).
 *
 * Queues one kernel: no allocation, no host sync, so it may be captured in a CUDA graph.
 *
 * Environment: PEREGRINE_GEMV=0 sends every linear to cuBLASLt (for comparison);
 * PEREGRINE_GEMV=all gives the GEMV every linear it can take (up to the row limit);
 * PEREGRINE_GEMV_MAX_ROWS=n (0..16, default 8) is that row limit; PEREGRINE_GEMV_PIPE=0 takes the plain kernels
 * instead of the pipelined ones (H200, 2026-11-28: o_proj 12.1 -> 9.4 us at 1 row, 65% -> 84% of copy bandwidth).
 * PEREGRINE_GEMV=ring: cuda-ring-gemv.ts takes linears of <= 8 rows first (to be measured, NOTES.md).
 */
import { PeregrineError } from '../../errors.js';
import { BIAS_KIND } from './cuda-quant-gemv.js';
import type { CudaTensor } from './cuda-tensor.js';
import type { DevicePtr } from './driver.js';
import type { CudaKernels } from './kernels.js';
import type { ParamKind } from './module.js';
import type { CudaStream } from './stream.js';

/** rows of x the kernels take (two n8 tiles of the m16n8k16 mma) */
export const GEMV_MAX_ROWS = 16;
/** rows up to which the GEMV is taken by default */
export const GEMV_DEFAULT_MAX_ROWS = 8;
/** weights up to this size go to the GEMV by default (f32-out LM heads of any size too) */
export const GEMV_MAX_WEIGHT_BYTES = 64 * 2 ** 20;
/** weight rows per block (the mma's m16) */
const ROWS_PER_BLOCK = 16;
/** k per chunk: a quad of lanes loads 4 x 16 bytes of one weight row */
const CHUNK_K = 32;
/** warps per block at most (kernels/gemv.cu: PGN_GEMV_MAX_THREADS / 32); the fastest plan measured */
const MAX_WARPS = 8;
const DEFAULT_UNROLL = 4;
// (out, x, w, bias, M, N, K, biasKind)
const GEMV_PARAMS: readonly ParamKind[] = ['ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'i32', 'i32'];

function envMaxRows(): number {
  const n = Number(process.env.PEREGRINE_GEMV_MAX_ROWS ?? GEMV_DEFAULT_MAX_ROWS);
  return Number.isInteger(n) && n >= 0 && n <= GEMV_MAX_ROWS ? n : GEMV_DEFAULT_MAX_ROWS;
}

/** When `linear` takes the GEMV; read once from the environment, tests and benchmarks may change it. */
export const gemvPolicy = {
  enabled: process.env.PEREGRINE_GEMV !== '0',
  /** every shape the kernel can take, not only those measured faster than cuBLASLt */
  all: process.env.PEREGRINE_GEMV === 'all',
  /** linears of <= 8 rows to the ring-buffered GEMV first (PEREGRINE_GEMV=ring; cuda-ring-gemv.ts) */
  ring: process.env.PEREGRINE_GEMV === 'ring',
  /** the pipelined kernels (two steps of weight loads in flight) for <= 8 rows; PEREGRINE_GEMV_PIPE=0: the plain ones */
  pipe: process.env.PEREGRINE_GEMV_PIPE !== '0',
  maxRows: envMaxRows(),
};

export interface GemvContext {
  readonly kernels: CudaKernels;
  readonly stream: CudaStream;
  /** for the ring-buffered GEMV's persistent grid (without them it is never taken) */
  readonly numSMs?: number;
  readonly maxSharedBytesPerBlock?: number;
}

export type GemvDtype = 'bf16' | 'f16';

export interface GemvArgs {
  readonly out: DevicePtr;
  readonly outDtype: GemvDtype | 'f32';
  readonly x: DevicePtr;
  readonly w: DevicePtr;
  readonly dtype: GemvDtype;
  readonly bias: DevicePtr | null;
  readonly biasDtype: GemvDtype | 'f32' | null;
  readonly M: number;
  readonly N: number;
  readonly K: number;
}

/**
 * Launch shape: warps per block splitting K, and 32-k chunks each warp loads per step; `pipe`: the next step's
 * weights are requested before this step's MMAs (two steps of loads in flight; unroll 2 or 4, up to 8 rows).
 */
export interface GemvPlan {
  readonly warps: 1 | 2 | 4 | 8;
  readonly unroll: 2 | 4 | 8;
  readonly pipe?: boolean;
}

/** The plans the kernels exist for (kernels/gemv.cu), for `rows` rows of x. */
export function gemvPlans(rows: number): GemvPlan[] {
  const warps = [1, 2, 4, 8] as const;
  const plain = warps.flatMap((w) => ([4, 8] as const).map((unroll): GemvPlan => ({ warps: w, unroll })));
  const piped = rows <= 8 ? warps.flatMap((w) => ([2, 4] as const).map((unroll): GemvPlan => ({ warps: w, unroll, pipe: true }))) : [];
  return [...plain, ...piped];
}

/** A plan as the benchmarks print it: w8 u4, w8 u4p. */
export function gemvPlanName(p: GemvPlan): string {
  return `w${p.warps} u${p.unroll}${p.pipe ? 'p' : ''}`;
}

/**
 * The plan for K: 8 warps, each loading 4 chunks per step (the fastest of the 8 plans in 22 of
 * the 25 measured 8B-shape rows; the other 3, all at 16 rows, preferred 8 chunks), fewer warps
 * when K is too short to give each one a full step.
 */
export function gemvPlan(K: number, rows = 1): GemvPlan {
  const chunks = Math.ceil(K / CHUNK_K);
  let warps = MAX_WARPS;
  while (warps > 1 && Math.ceil(chunks / warps) < DEFAULT_UNROLL) warps /= 2;
  return { warps: warps as GemvPlan['warps'], unroll: DEFAULT_UNROLL, ...(gemvPolicy.pipe && rows <= 8 ? { pipe: true } : {}) };
}

/** Whether the policy gives the GEMV a linear of M rows, weight [N, K], out dtype `outDtype`. */
export function gemvTakes(M: number, N: number, K: number, outDtype: string): boolean {
  if (!gemvPolicy.enabled || M < 1 || M > Math.min(gemvPolicy.maxRows, GEMV_MAX_ROWS)) return false;
  if (K % 8 !== 0 || K === 0 || N === 0) return false;
  return gemvPolicy.all || outDtype === 'f32' || N * K * 2 <= GEMV_MAX_WEIGHT_BYTES;
}

/** Queues the GEMV for `a` (shape and alignment already checked, see `linearGemv`). */
export function gemv(ctx: GemvContext, a: GemvArgs, plan: GemvPlan = gemvPlan(a.K, a.M)): void {
  const mt = a.M <= 8 ? 8 : 16;
  if (plan.pipe ? mt !== 8 || plan.unroll === 8 : plan.unroll === 2) throw new PeregrineError('PGN_ERR_INTERNAL', `gemv: no kernel for plan ${gemvPlanName(plan)} at ${a.M} rows`, { plan: gemvPlanName(plan), M: a.M });
  const kernel = ctx.kernels.module.kernel(`gemv_${a.dtype}_${a.outDtype}_m${mt}_u${plan.unroll}${plan.pipe ? 'p' : ''}`, GEMV_PARAMS);
  const sharedBytes = plan.warps * ROWS_PER_BLOCK * (mt + 1) * 4;
  const biasKind = a.bias !== null && a.biasDtype !== null ? BIAS_KIND[a.biasDtype] : 0;
  kernel.launch(Math.ceil(a.N / ROWS_PER_BLOCK), 32 * plan.warps, sharedBytes, ctx.stream, [a.out, a.x, a.w, biasKind ? a.bias : null, a.M, a.N, a.K, biasKind]);
}

/**
 * Whether the GEMV takes this linear: the policy takes the shape (`gemvTakes`), x and w are
 * 16-byte aligned, and the bias is one the cuBLASLt path would accept too (its dtype is out's,
 * or out is f32). Tensors are the checked operands of `linear` (x and w bf16/f16 of one dtype).
 */
export function gemvSuits(out: CudaTensor, x: CudaTensor, w: CudaTensor, bias: CudaTensor | null, numTokens: number): boolean {
  const [N, K] = w.shape as [number, number];
  if (!gemvTakes(numTokens, N, K, out.dtype) || x.ptr % 16 !== 0 || w.ptr % 16 !== 0) return false;
  return bias === null || bias.dtype === out.dtype || out.dtype === 'f32';
}

/** GemvArgs of a checked `linear` call (x may be a gateUp row pair for the ring GEMV's SiLU prologue). */
export function gemvArgsOf(out: CudaTensor, x: CudaTensor, w: CudaTensor, bias: CudaTensor | null, numTokens: number): GemvArgs {
  const [N, K] = w.shape as [number, number];
  return {
    out: out.ptr, outDtype: out.dtype as GemvArgs['outDtype'], x: x.ptr, w: w.ptr, dtype: w.dtype as GemvDtype,
    bias: bias?.ptr ?? null, biasDtype: (bias?.dtype ?? null) as GemvArgs['biasDtype'], M: numTokens, N, K,
  };
}

/** `linear` on the GEMV when it suits (see `gemvSuits`); false leaves the call to cuBLASLt. */
export function linearGemv(ctx: GemvContext, out: CudaTensor, x: CudaTensor, w: CudaTensor, bias: CudaTensor | null, numTokens: number): boolean {
  if (!gemvSuits(out, x, w, bias, numTokens)) return false;
  gemv(ctx, gemvArgsOf(out, x, w, bias, numTokens));
  return true;
}
