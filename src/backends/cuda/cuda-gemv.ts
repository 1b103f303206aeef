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
 * PEREGRINE_GEMV_MAX_ROWS=n (0..16, default 8) is that row limit.
 * PEREGRINE_GEMV=ring (to be measured, NOTES.md) sends every linear of <= 8 rows whose x fits a block,
 * whatever its size, to the ring-buffered decode GEMV of quant_gemv.cu instead (its dense kind: weights
 * cp.async'ed through a per-warp ring by persistent blocks, the path that reaches 95% of copy bandwidth
 * on FP8 gate_up), the candidate to replace cuBLASLt on gate_up / down at batch 1 and so carry fused
 * prologues; the rest as without it.
 */
import type { LinearFusion } from '../backend.js';
import { QGEMV_MAX_M, QGEMV_THREADS, qgemvChunkM, qgemvGrid, qgemvSharedBytes } from './cuda-quant-gemv.js';
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
const BIAS_KIND = { f32: 1, bf16: 2, f16: 3 } as const;
/** quant.cuh's outKind */
const OUT_KIND = { f32: 0, bf16: 1, f16: 2 } as const;
// (out, x, w, bias, M, N, K, biasKind)
const GEMV_PARAMS: readonly ParamKind[] = ['ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'i32', 'i32'];
// qgemv_dense_<prologue>_<dtype>(out, x, w, bias, normWeight, M, N, K, outKind, biasKind, eps, weightOffset, accumulate)
const RING_PARAMS: readonly ParamKind[] = ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'i32', 'i32', 'i32', 'f32', 'f32', 'i32'];

function envMaxRows(): number {
  const n = Number(process.env.PEREGRINE_GEMV_MAX_ROWS ?? GEMV_DEFAULT_MAX_ROWS);
  return Number.isInteger(n) && n >= 0 && n <= GEMV_MAX_ROWS ? n : GEMV_DEFAULT_MAX_ROWS;
}

/** When `linear` takes the GEMV; read once from the environment, tests and benchmarks may change it. */
export const gemvPolicy = {
  enabled: process.env.PEREGRINE_GEMV !== '0',
  /** every shape the kernel can take, not only those measured faster than cuBLASLt */
  all: process.env.PEREGRINE_GEMV === 'all',
  /** linears of <= 8 rows to the ring-buffered GEMV (PEREGRINE_GEMV=ring) */
  ring: process.env.PEREGRINE_GEMV === 'ring',
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

/** Launch shape: warps per block splitting K, and 32-k chunks each warp loads per step. */
export interface GemvPlan {
  readonly warps: 1 | 2 | 4 | 8;
  readonly unroll: 4 | 8;
}

/**
 * The plan for K: 8 warps, each loading 4 chunks per step (the fastest of the 8 plans in 22 of
 * the 25 measured 8B-shape rows; the other 3, all at 16 rows, preferred 8 chunks), fewer warps
 * when K is too short to give each one a full step.
 */
export function gemvPlan(K: number): GemvPlan {
  const chunks = Math.ceil(K / CHUNK_K);
  let warps = MAX_WARPS;
  while (warps > 1 && Math.ceil(chunks / warps) < DEFAULT_UNROLL) warps /= 2;
  return { warps: warps as GemvPlan['warps'], unroll: DEFAULT_UNROLL };
}

/** Whether the policy gives the GEMV a linear of M rows, weight [N, K], out dtype `outDtype`. */
export function gemvTakes(M: number, N: number, K: number, outDtype: string): boolean {
  if (!gemvPolicy.enabled || M < 1 || M > Math.min(gemvPolicy.maxRows, GEMV_MAX_ROWS)) return false;
  if (K % 8 !== 0 || K === 0 || N === 0) return false;
  return gemvPolicy.all || outDtype === 'f32' || N * K * 2 <= GEMV_MAX_WEIGHT_BYTES;
}

/** Queues the GEMV for `a` (shape and alignment already checked, see `linearGemv`). */
export function gemv(ctx: GemvContext, a: GemvArgs, plan: GemvPlan = gemvPlan(a.K)): void {
  const mt = a.M <= 8 ? 8 : 16;
  const kernel = ctx.kernels.module.kernel(`gemv_${a.dtype}_${a.outDtype}_m${mt}_u${plan.unroll}`, GEMV_PARAMS);
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

/** Whether the policy sends a linear of `numTokens` rows to the ring GEMV at all (before any shape check). */
export function ringGemvWanted(ctx: GemvContext, numTokens: number): boolean {
  return gemvPolicy.enabled && gemvPolicy.ring && ctx.numSMs !== undefined && numTokens >= 1 && numTokens <= QGEMV_MAX_M;
}

/**
 * Whether the ring-buffered GEMV takes this linear: PEREGRINE_GEMV=ring, 1..8 rows, K % 32 == 0, x of all
 * rows fits one block's shared memory, 16-byte aligned x and w, a bias `gemvSuits` would take.
 */
export function ringGemvSuits(ctx: GemvContext, out: CudaTensor, x: CudaTensor, w: CudaTensor, bias: CudaTensor | null, numTokens: number): boolean {
  const [N, K] = w.shape as [number, number];
  if (!ringGemvWanted(ctx, numTokens) || ctx.maxSharedBytesPerBlock === undefined) return false;
  if (N === 0 || K === 0 || K % 32 !== 0 || x.ptr % 16 !== 0 || w.ptr % 16 !== 0) return false;
  if (qgemvChunkM('dense', K, ctx.maxSharedBytesPerBlock) < numTokens) return false;
  return bias === null || bias.dtype === out.dtype || out.dtype === 'f32';
}

/** The ring GEMV's prologue (kernels/quant_gemv.cu QG_PRO_*): what the kernel stages as x. */
export type RingPrologue = 'copy' | 'silu' | 'norm';

/** What the prologue / epilogue need beyond GemvArgs. */
export interface RingExtras {
  readonly normWeight?: DevicePtr | null;
  readonly eps?: number;
  readonly weightOffset?: number;
  /** out += the result (rounded to out's dtype) */
  readonly accumulate?: boolean;
}

/**
 * Queues the ring-buffered GEMV (quant_gemv.cu, dense kind) for `a`, which `ringGemvSuits` took. Prologue
 * 'silu': a.x is gateUp [M, 2K], staged as silu(gate) * up; 'norm': a.x is normalized with extras.normWeight.
 */
export function ringGemv(ctx: GemvContext, a: GemvArgs, prologue: RingPrologue = 'copy', extras: RingExtras = {}): void {
  const kernel = ctx.kernels.module.kernel(`qgemv_dense_${prologue}_${a.dtype}`, RING_PARAMS);
  const shared = qgemvSharedBytes('dense', a.M, a.K);
  const grid = qgemvGrid(a.N, shared, ctx.numSMs!, ctx.maxSharedBytesPerBlock!);
  const biasKind = a.bias !== null && a.biasDtype !== null ? BIAS_KIND[a.biasDtype] : 0;
  kernel.launch(grid, QGEMV_THREADS, shared, ctx.stream, [
    a.out, a.x, a.w, biasKind ? a.bias : null, extras.normWeight ?? null, a.M, a.N, a.K, OUT_KIND[a.outDtype], biasKind,
    extras.eps ?? 0, extras.weightOffset ?? 0, extras.accumulate ? 1 : 0,
  ]);
}

/**
 * Backend.fusedLinear on the ring GEMV (operands checked by the caller: x [M, K], or gateUp [M, 2K] for
 * siluMul, in w's dtype; normWeight [K] for rmsNorm); false leaves the separate ops to the caller.
 */
export function fusedLinearRing(ctx: GemvContext, out: CudaTensor, x: CudaTensor, w: CudaTensor, bias: CudaTensor | null, numTokens: number, fusion: LinearFusion, normWeight: CudaTensor | null): boolean {
  const [N, K] = w.shape as [number, number];
  if (!ringGemvSuits(ctx, out, x, w, bias, numTokens)) return false;
  if (normWeight && normWeight.ptr % 16 !== 0) return false;
  const input = fusion.input;
  const prologue: RingPrologue = input?.kind === 'siluMul' ? 'silu' : input?.kind === 'rmsNorm' ? 'norm' : 'copy';
  ringGemv(ctx, {
    out: out.ptr, outDtype: out.dtype as GemvArgs['outDtype'], x: x.ptr, w: w.ptr, dtype: w.dtype as GemvDtype,
    bias: bias?.ptr ?? null, biasDtype: (bias?.dtype ?? null) as GemvArgs['biasDtype'], M: numTokens, N, K,
  }, prologue, {
    normWeight: normWeight?.ptr ?? null,
    eps: input?.kind === 'rmsNorm' ? input.eps : 0,
    weightOffset: input?.kind === 'rmsNorm' ? input.weightOffset : 0,
    accumulate: fusion.accumulate === true,
  });
  return true;
}

/** `linear` on a GEMV when one suits (the ring-buffered one under PEREGRINE_GEMV=ring, else see `gemvSuits`); false leaves the call to cuBLASLt. */
export function linearGemv(ctx: GemvContext, out: CudaTensor, x: CudaTensor, w: CudaTensor, bias: CudaTensor | null, numTokens: number): boolean {
  const ring = ringGemvSuits(ctx, out, x, w, bias, numTokens);
  if (!ring && !gemvSuits(out, x, w, bias, numTokens)) return false;
  const [N, K] = w.shape as [number, number];
  const args: GemvArgs = {
    out: out.ptr, outDtype: out.dtype as GemvArgs['outDtype'], x: x.ptr, w: w.ptr, dtype: w.dtype as GemvDtype,
    bias: bias?.ptr ?? null, biasDtype: (bias?.dtype ?? null) as GemvArgs['biasDtype'], M: numTokens, N, K,
  };
  if (ring) ringGemv(ctx, args);
  else gemv(ctx, args);
  return true;
}
