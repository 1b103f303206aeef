/**
 * The CUDA ops other than attention: argument checks, then one kernel (or cuBLASLt call)
 * queued on the backend's stream. Shapes and semantics follow backend.ts and the CPU
 * reference; every op reads only the first `numTokens` rows it is told about.
 */
import { PeregrineError } from '../../errors.js';
import { bytesPerElement, isQuantizedWeight, type GeluApprox, type LayerKvCache, type LinearFusion, type QkNormParams, type QuantizedWeight, type RopeParams, type Tensor } from '../backend.js';
import type { CublasLt } from './cublaslt.js';
import { deviceKvCache } from './cuda-attention.js';
import { linearGemv } from './cuda-gemv.js';
import { fusedLinearRing, linearRing, ringGemvWanted } from './cuda-ring-gemv.js';
import { asCuda, type CudaTensor } from './cuda-tensor.js';
import { check, type Driver } from './driver.js';
import type { CudaKernels } from './kernels.js';
import { floatTensor, i32Tensor, invalid, lastDim, requireCount, requireLength, requireRows, sameDtype, vecFlag } from './op-checks.js';
import type { CudaStream } from './stream.js';

export interface OpContext {
  readonly drv: Driver;
  readonly kernels: CudaKernels;
  readonly stream: CudaStream;
  readonly blas: CublasLt;
  readonly numSMs: number;
  readonly maxSharedBytesPerBlock: number;
}

const THREADS = 256;
const HALF = ['bf16', 'f16'] as const;

/** Blocks for a grid-stride loop over `work` items (a few waves at most). */
function blocksFor(ctx: OpContext, work: number): number {
  return Math.max(1, Math.min(Math.ceil(work / THREADS), ctx.numSMs * 16));
}

/** Threads for one block per row of `width` elements moved in packs of `pack`. */
/** Threads of a one-block-per-row kernel: one per `pack` elements of the row, whole warps, 32 .. maxThreads. */
export function rowThreads(width: number, pack: number, maxThreads = 1024): number {
  const units = Math.ceil(width / pack);
  return Math.min(maxThreads, Math.max(32, Math.ceil(units / 32) * 32));
}

export function embedding(ctx: OpContext, out: Tensor, table: Tensor, ids: Tensor, numTokens: number): void {
  gatherRows(ctx, out, table, ids, numTokens, 'embedding');
}

/** out[t] = table[ids[t] - vocabStart], zeros where that row is not in table (a vocab-parallel shard). */
export function embeddingShard(ctx: OpContext, out: Tensor, table: Tensor, ids: Tensor, numTokens: number, vocabStart: number): void {
  requireCount(vocabStart, 'embeddingShard', 'vocabStart');
  gatherRows(ctx, out, table, ids, numTokens, 'embeddingShard', vocabStart);
}

/** out [R, H] = x[indices[r] - indexOffset]; rows whose index falls outside x are zero-filled. */
export function gatherRows(ctx: OpContext, outT: Tensor, xT: Tensor, indices: Tensor, numRows: number, op = 'gatherRows', indexOffset = 0): void {
  requireCount(numRows, op, 'numRows');
  const x = floatTensor(xT, op, 'x');
  const out = floatTensor(outT, op, 'out');
  sameDtype(op, x, [out, 'out']);
  const H = lastDim(x);
  requireRows(out, numRows, H, op, 'out');
  const idx = i32Tensor(indices, op, 'indices', numRows);
  if (numRows === 0) return;
  const vec = vecFlag(x.dtype, H, x, out);
  const threads = rowThreads(H, vec ? 16 / bytesPerElement(x.dtype) : 1);
  ctx.kernels.typed('gather_rows', x.dtype).launch(Math.min(numRows, 65535), threads, 0, ctx.stream, [out.ptr, x.ptr, idx.ptr, numRows, H, Math.floor(x.numel / H), vec, indexOffset]);
}

/** Fills `t` with uniform values in [-scale, scale) from (element index, seed), on the device. */
export function fillUniform(ctx: OpContext, tT: Tensor, seed: number, scale: number): void {
  const t = floatTensor(tT, 'fillUniform', 'tensor');
  ctx.kernels.typed('fill_uniform', t.dtype).launch(t.numel === 0 ? 0 : blocksFor(ctx, t.numel), THREADS, 0, ctx.stream, [t.ptr, t.numel, seed >>> 0, scale]);
}

export function copy(ctx: OpContext, outT: Tensor, xT: Tensor, numTokens: number): void {
  requireCount(numTokens, 'copy', 'numTokens');
  const x = asCuda(xT, 'copy', 'x');
  const out = asCuda(outT, 'copy', 'out');
  sameDtype('copy', x, [out, 'out']);
  const H = lastDim(x);
  requireRows(x, numTokens, H, 'copy', 'x');
  requireRows(out, numTokens, H, 'copy', 'out');
  const bytes = numTokens * H * bytesPerElement(x.dtype);
  if (bytes > 0) check(ctx.drv, ctx.drv.cuMemcpyDtoDAsync(out.ptr, x.ptr, bytes, ctx.stream.handle), 'cuMemcpyDtoDAsync');
}

export function add(ctx: OpContext, outT: Tensor, aT: Tensor, bT: Tensor, numTokens: number): void {
  requireCount(numTokens, 'add', 'numTokens');
  const out = floatTensor(outT, 'add', 'out');
  const a = floatTensor(aT, 'add', 'a');
  const b = floatTensor(bT, 'add', 'b');
  sameDtype('add', out, [a, 'a'], [b, 'b']);
  const H = lastDim(out);
  for (const [t, name] of [[out, 'out'], [a, 'a'], [b, 'b']] as const) requireRows(t, numTokens, H, 'add', name);
  const n = numTokens * H;
  ctx.kernels.typed('add', out.dtype).launch(n === 0 ? 0 : blocksFor(ctx, n), THREADS, 0, ctx.stream, [out.ptr, a.ptr, b.ptr, n, vecFlag(out.dtype, n, out, a, b)]);
}

function unary(ctx: OpContext, op: 'relu' | 'gelu' | 'scale' | 'softcap' | 'clamp', outT: Tensor, xT: Tensor, numTokens: number, extra: number[]): void {
  requireCount(numTokens, op, 'numTokens');
  const x = floatTensor(xT, op, 'x');
  const out = floatTensor(outT, op, 'out');
  sameDtype(op, x, [out, 'out']);
  const H = lastDim(x);
  requireRows(x, numTokens, H, op, 'x');
  requireRows(out, numTokens, H, op, 'out');
  const n = numTokens * H;
  ctx.kernels.typed(op, x.dtype).launch(n === 0 ? 0 : blocksFor(ctx, n), THREADS, 0, ctx.stream, [out.ptr, x.ptr, n, vecFlag(x.dtype, n, x, out), ...extra]);
}

export function relu(ctx: OpContext, out: Tensor, x: Tensor, numTokens: number): void {
  unary(ctx, 'relu', out, x, numTokens, []);
}

export function gelu(ctx: OpContext, out: Tensor, x: Tensor, numTokens: number, approx: GeluApprox): void {
  unary(ctx, 'gelu', out, x, numTokens, [geluFlag('gelu', approx)]);
}

export function scale(ctx: OpContext, out: Tensor, x: Tensor, factor: number, numTokens: number): void {
  if (!Number.isFinite(factor)) throw invalid('scale', `factor must be finite, got ${factor}`, { factor });
  unary(ctx, 'scale', out, x, numTokens, [factor]);
}

export function softcap(ctx: OpContext, out: Tensor, x: Tensor, cap: number, numTokens: number): void {
  if (!(cap > 0)) throw invalid('softcap', `cap must be positive, got ${cap}`, { cap });
  unary(ctx, 'softcap', out, x, numTokens, [cap]);
}

export function clamp(ctx: OpContext, out: Tensor, x: Tensor, min: number, max: number, numTokens: number): void {
  if (!(min <= max)) throw invalid('clamp', `min ${min} must not exceed max ${max}`, { min, max });
  unary(ctx, 'clamp', out, x, numTokens, [min, max]);
}

function geluFlag(op: string, approx: GeluApprox): number {
  if (approx !== 'none' && approx !== 'tanh') throw invalid(op, `unknown approximation '${String(approx)}'`, { approx });
  return approx === 'tanh' ? 1 : 0;
}

/** The checked tensors of a gated activation (siluMul, geluMul, siluMulFp8): gateUp [T, 2I], out [T, I] of one dtype. */
export function gatedArgs(op: string, outT: Tensor, gateUpT: Tensor, numTokens: number) {
  requireCount(numTokens, op, 'numTokens');
  const gateUp = floatTensor(gateUpT, op, 'gateUp');
  const out = floatTensor(outT, op, 'out');
  sameDtype(op, gateUp, [out, 'out']);
  const width = lastDim(gateUp);
  if (width % 2 !== 0) throw invalid(op, `gateUp rows have odd width ${width}`, { shape: gateUp.shape });
  const I = width / 2;
  requireRows(gateUp, numTokens, width, op, 'gateUp');
  requireRows(out, numTokens, I, op, 'out');
  return { gateUp, out, I };
}

function gated(ctx: OpContext, op: 'silu_mul' | 'gelu_mul', outT: Tensor, gateUpT: Tensor, numTokens: number, extra: number[]): void {
  const { gateUp, out, I } = gatedArgs(op, outT, gateUpT, numTokens);
  const n = numTokens * I;
  ctx.kernels.typed(op, out.dtype).launch(n === 0 ? 0 : blocksFor(ctx, n), THREADS, 0, ctx.stream, [out.ptr, gateUp.ptr, numTokens, I, vecFlag(out.dtype, I, out, gateUp), ...extra]);
}

export function siluMul(ctx: OpContext, out: Tensor, gateUp: Tensor, numTokens: number): void {
  gated(ctx, 'silu_mul', out, gateUp, numTokens, []);
}

export function geluMul(ctx: OpContext, out: Tensor, gateUp: Tensor, numTokens: number, approx: GeluApprox): void {
  gated(ctx, 'gelu_mul', out, gateUp, numTokens, [geluFlag('geluMul', approx)]);
}

/** The checked tensors of a norm op (rmsNorm, layerNorm, rmsNormFp8): same dtype, rows of the weight's width. */
export function normArgs(op: string, outT: Tensor, xT: Tensor, weightT: Tensor, numTokens: number, residualT: Tensor | null | undefined) {
  requireCount(numTokens, op, 'numTokens');
  const x = floatTensor(xT, op, 'x');
  const out = floatTensor(outT, op, 'out');
  const weight = floatTensor(weightT, op, 'weight');
  const residual = residualT ? floatTensor(residualT, op, 'residual') : null;
  sameDtype(op, x, [out, 'out'], [weight, 'weight'], [residual, 'residual']);
  const H = weight.numel;
  requireRows(x, numTokens, H, op, 'x');
  requireRows(out, numTokens, H, op, 'out');
  if (residual) requireRows(residual, numTokens, H, op, 'residual');
  return { x, out, weight, residual, H };
}

export function rmsNorm(ctx: OpContext, outT: Tensor, xT: Tensor, weightT: Tensor, eps: number, numTokens: number, residualT?: Tensor | null, weightOffset = 0): void {
  const { x, out, weight, residual, H } = normArgs('rmsNorm', outT, xT, weightT, numTokens, residualT);
  const vec = vecFlag(x.dtype, H, x, out, weight, residual);
  const threads = rowThreads(H, vec ? 16 / bytesPerElement(x.dtype) : 1);
  ctx.kernels.typed('rms_norm', x.dtype).launch(numTokens, threads, 0, ctx.stream, [out.ptr, x.ptr, residual?.ptr ?? null, weight.ptr, eps, weightOffset, H, vec]);
}

export function layerNorm(ctx: OpContext, outT: Tensor, xT: Tensor, weightT: Tensor, biasT: Tensor | null, eps: number, numTokens: number, residualT?: Tensor | null): void {
  const { x, out, weight, residual, H } = normArgs('layerNorm', outT, xT, weightT, numTokens, residualT);
  const bias = biasT ? floatTensor(biasT, 'layerNorm', 'bias') : null;
  sameDtype('layerNorm', x, [bias, 'bias']);
  if (bias) requireLength(bias, H, 'layerNorm', 'bias');
  const vec = vecFlag(x.dtype, H, x, out, weight, residual, bias);
  const threads = rowThreads(H, vec ? 16 / bytesPerElement(x.dtype) : 1);
  ctx.kernels.typed('layer_norm', x.dtype).launch(numTokens, threads, 0, ctx.stream, [out.ptr, x.ptr, residual?.ptr ?? null, weight.ptr, bias?.ptr ?? null, eps, H, vec]);
}

export function qkRmsNorm(ctx: OpContext, qkvT: Tensor, qWeightT: Tensor, kWeightT: Tensor, eps: number, numTokens: number, p: QkNormParams): void {
  const op = 'qkRmsNorm';
  requireCount(numTokens, op, 'numTokens');
  const { numHeads, numKvHeads, headDim } = p;
  const qkv = floatTensor(qkvT, op, 'qkv');
  const qw = floatTensor(qWeightT, op, 'qWeight');
  const kw = floatTensor(kWeightT, op, 'kWeight');
  sameDtype(op, qkv, [qw, 'qWeight'], [kw, 'kWeight']);
  requireRows(qkv, numTokens, (numHeads + 2 * numKvHeads) * headDim, op, 'qkv');
  requireLength(qw, headDim, op, 'qWeight');
  requireLength(kw, headDim, op, 'kWeight');
  ctx.kernels.typed('qk_rms_norm', qkv.dtype).launch([numTokens, numHeads + numKvHeads], 32, 0, ctx.stream, [qkv.ptr, qw.ptr, kw.ptr, eps, p.weightOffset ?? 0, numHeads, numKvHeads, headDim]);
}

/** The checked operands of a linear: w [N, K] and x [T, xWidth * K] half floats of one dtype, out [T, N] in it or f32, bias [N]. */
function linearOperands(op: string, outT: Tensor, xT: Tensor, wT: Tensor, biasT: Tensor | null, numTokens: number, xName: string, xWidth: number) {
  requireCount(numTokens, op, 'numTokens');
  const w = floatTensor(wT, op, 'w', HALF);
  const x = floatTensor(xT, op, xName, HALF);
  const out = floatTensor(outT, op, 'out');
  sameDtype(op, w, [x, xName]);
  if (out.dtype !== 'f32' && out.dtype !== w.dtype) throw invalid(op, `out must be ${w.dtype} or f32, got ${out.dtype}`, { dtype: out.dtype });
  if (w.shape.length !== 2) throw invalid(op, `weight must be 2-D [out, in], got [${w.shape.join(', ')}]`, { shape: w.shape });
  const [N, K] = w.shape as [number, number];
  requireRows(x, numTokens, xWidth * K, op, xName);
  requireRows(out, numTokens, N, op, 'out');
  const bias = biasT ? floatTensor(biasT, op, 'bias') : null;
  if (bias) requireLength(bias, N, op, 'bias');
  return { out, x, w, bias, N, K };
}

export function linear(ctx: OpContext, outT: Tensor, xT: Tensor, wT: Tensor | QuantizedWeight, biasT: Tensor | null, numTokens: number): void {
  const op = 'linear';
  if (isQuantizedWeight(wT)) {
    throw new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', `the CUDA backend has no kernels for ${wT.kind} weights yet (shape [${wT.shape.join(', ')}])`, { kind: wT.kind });
  }
  const { out, x, w, bias, N, K } = linearOperands(op, outT, xT, wT, biasT, numTokens, 'x', 1);
  if (numTokens === 0) return;
  if (linearRing(ctx, out, x, w, bias, numTokens) || linearGemv(ctx, out, x, w, bias, numTokens)) return; // decode-shaped: our GEMVs (PEREGRINE_GEMV=0: cuBLASLt)
  const fused = bias !== null && bias.dtype === out.dtype;
  ctx.blas.matmul({ out: out.ptr, outDtype: out.dtype as 'f32' | 'bf16' | 'f16', x: x.ptr, w: w.ptr, dtype: w.dtype as 'bf16' | 'f16', bias: fused ? bias.ptr : null, M: numTokens, N, K }, ctx.stream);
  if (bias && !fused) {
    if (out.dtype !== 'f32') throw invalid(op, `bias is ${bias.dtype} but out is ${out.dtype}`, { dtype: bias.dtype });
    const n = numTokens * N;
    ctx.kernels.typed('bias_add_f32', bias.dtype).launch(blocksFor(ctx, n), THREADS, 0, ctx.stream, [out.ptr, bias.ptr, numTokens, N]);
  }
}

/**
 * Backend.fusedLinear: the linear with `fusion` folded in, as one kernel where the ring GEMV takes it
 * (PEREGRINE_GEMV=ring); returns false, having queued nothing, where it does not.
 */
export function fusedLinear(ctx: OpContext, outT: Tensor, xT: Tensor, wT: Tensor | QuantizedWeight, biasT: Tensor | null, numTokens: number, fusion: LinearFusion): boolean {
  const op = 'fusedLinear';
  if (isQuantizedWeight(wT) || !ringGemvWanted(ctx, numTokens)) return false; // cheap: declined before any check
  const silu = fusion.input?.kind === 'siluMul';
  const { out, x, w, bias, K } = linearOperands(op, outT, xT, wT, biasT, numTokens, silu ? 'gateUp' : 'x', silu ? 2 : 1);
  let normWeight: CudaTensor | null = null;
  if (fusion.input?.kind === 'rmsNorm') {
    normWeight = floatTensor(fusion.input.weight, op, 'norm weight', HALF);
    sameDtype(op, w, [normWeight, 'norm weight']);
    requireLength(normWeight, K, op, 'norm weight');
  }
  return numTokens > 0 && fusedLinearRing(ctx, out, x, w, bias, numTokens, fusion, normWeight);
}

/** The thread-per-item RoPE kernel where it can run (PEREGRINE_ROPE_VEC=0: the warp-per-head kernel always; tests, A/B). */
export const ropeVec = { enabled: process.env.PEREGRINE_ROPE_VEC !== '0' };

/**
 * Which RoPE kernel (kernels/rope.cu) and how many 128-thread blocks a token: the thread-per-item kernel where
 * rows split into 8-element packs (one thread per 4 rotated pairs of q / k or 8 elements of k past the rotary
 * dims or of v), else a warp per head.
 */
export function ropeLaunch(p: RopeParams, rotates: boolean, aligned: boolean): { vec: boolean; blocksPerToken: number } {
  const { numHeads, numKvHeads, headDim, rotaryDim } = p;
  const vec = ropeVec.enabled && aligned && headDim % 8 === 0 && (!rotates || rotaryDim % 8 === 0);
  if (!vec) return { vec, blocksPerToken: Math.ceil((numHeads + numKvHeads) / 4) };
  const items = (rotates ? numHeads * (rotaryDim / 8) : 0) + (numKvHeads * 2 * headDim) / 8;
  return { vec, blocksPerToken: Math.ceil(items / 128) };
}

export function ropeWriteKv(ctx: OpContext, qkvT: Tensor, positionsT: Tensor, cosSinT: Tensor | null, cache: LayerKvCache, slotMappingT: Tensor, numTokens: number, p: RopeParams): void {
  const op = 'ropeWriteKv';
  requireCount(numTokens, op, 'numTokens');
  const { numHeads, numKvHeads, headDim, rotaryDim, style } = p;
  const qkv = floatTensor(qkvT, op, 'qkv');
  const kvWidth = numKvHeads * headDim;
  requireRows(qkv, numTokens, (numHeads + 2 * numKvHeads) * headDim, op, 'qkv');
  const { k, v, fp8, numSlots, scaleArgs } = deviceKvCache(cache, qkv, kvWidth, op);
  const slots = i32Tensor(slotMappingT, op, 'slotMapping', numTokens);
  let cosSin: CudaTensor | null = null;
  let positions: CudaTensor | null = null;
  if (cosSinT) {
    if (rotaryDim <= 0 || rotaryDim % 2 !== 0 || rotaryDim > headDim) throw invalid(op, `rotaryDim ${rotaryDim} must be even and in 2..headDim (${headDim})`, { rotaryDim, headDim });
    if (style !== 'neox' && style !== 'gptj') throw invalid(op, `unknown rope style '${String(style)}'`, { style });
    cosSin = floatTensor(cosSinT, op, 'cosSin', ['f32']);
    requireRows(cosSin, 0, rotaryDim, op, 'cosSin');
    positions = i32Tensor(positionsT, op, 'positions', numTokens);
  }
  const numPositions = cosSin ? Math.floor(cosSin.numel / rotaryDim) : 0;
  const aligned = [qkv, k, v, cosSin].every((t) => t === null || t.ptr % 16 === 0);
  const { vec, blocksPerToken } = ropeLaunch(p, cosSin !== null, aligned);
  const family = `rope_write_kv${vec ? '_vec' : ''}${fp8 ? '_fp8' : ''}` as const;
  ctx.kernels.typed(family, qkv.dtype).launch([numTokens, blocksPerToken], 128, 0, ctx.stream, [
    qkv.ptr, positions?.ptr ?? null, cosSin?.ptr ?? null, k.ptr, v.ptr, slots.ptr,
    numHeads, numKvHeads, headDim, rotaryDim, style === 'gptj' ? 1 : 0, numPositions, numSlots, ...scaleArgs,
  ]);
}
