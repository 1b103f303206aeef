/**
 * The ring-buffered decode GEMV for bf16 / f16 weights (kernels/quant_gemv.cu, dense kind): persistent
 * blocks stream the weights through a per-warp cp.async ring (the path that reaches 95% of copy bandwidth
 * on FP8 gate_up), M <= 8 rows. The block stages x itself, so a prologue can transform it on the way:
 * RMSNorm of the residual stream, or silu(gate) * up of a gateUp pair; an epilogue can add the result into
 * out (the residual add). Backend.fusedLinear and models/fused-layer.ts use them to run a Llama layer in
 * six kernels. PEREGRINE_GEMV=ring turns it on (to be measured, NOTES.md); off, nothing here is taken.
 *
 * Queues one kernel: no allocation, no host sync, so it may be captured in a CUDA graph.
 */
import type { LinearFusion } from '../backend.js';
import { gemvArgsOf, gemvPolicy, type GemvArgs, type GemvContext } from './cuda-gemv.js';
import { BIAS_KIND, OUT_KIND, QGEMV_MAX_M, QGEMV_THREADS, qgemvChunkM, qgemvGrid, qgemvSharedBytes } from './cuda-quant-gemv.js';
import type { CudaTensor } from './cuda-tensor.js';
import type { DevicePtr } from './driver.js';
import type { ParamKind } from './module.js';

// qgemv_dense_<prologue>_<dtype>(out, x, w, bias, normWeight, M, N, K, outKind, biasKind, eps, weightOffset, accumulate)
const RING_PARAMS: readonly ParamKind[] = ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'i32', 'i32', 'i32', 'f32', 'f32', 'i32'];

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
  if (!ringGemvSuits(ctx, out, x, w, bias, numTokens)) return false;
  if (normWeight && normWeight.ptr % 16 !== 0) return false;
  const input = fusion.input;
  const prologue: RingPrologue = input?.kind === 'siluMul' ? 'silu' : input?.kind === 'rmsNorm' ? 'norm' : 'copy';
  ringGemv(ctx, gemvArgsOf(out, x, w, bias, numTokens), prologue, {
    normWeight: normWeight?.ptr ?? null,
    eps: input?.kind === 'rmsNorm' ? input.eps : 0,
    weightOffset: input?.kind === 'rmsNorm' ? input.weightOffset : 0,
    accumulate: fusion.accumulate === true,
  });
  return true;
}

/** `linear` on the ring GEMV when it takes it (see `ringGemvSuits`); false leaves the call to the other paths. */
export function linearRing(ctx: GemvContext, out: CudaTensor, x: CudaTensor, w: CudaTensor, bias: CudaTensor | null, numTokens: number): boolean {
  if (!ringGemvSuits(ctx, out, x, w, bias, numTokens)) return false;
  ringGemv(ctx, gemvArgsOf(out, x, w, bias, numTokens));
  return true;
}
