/**
 * FP8 linears beyond the decode GEMV (cuda-quant.ts dispatches): activations quantized to E4M3 per token (or with
 * a static / per-tensor scale), the tensor-core GEMV `quant_fp8_mma` for a few tokens, and cuBLASLt's FP8 GEMM with
 * outer-vector or scalar scales, or unscaled into f32 scratch and our scale epilogue where cuBLASLt refuses those.
 */
import { PeregrineError } from '../../errors.js';
import type { Fp8Activations, Tensor } from '../backend.js';
import { FP8_MIN_ACTIVATION_SCALE } from '../../weights/quant/fp8.js';
import type { CudaBackend } from './cuda-backend.js';
import type { OutDtype } from './cuda-quant-gemm.js';
import { addBias, dequantLinear } from './cuda-quant-dequant.js';
import { quantFastPolicy } from './cuda-quant-gemv.js';
import { ACC_BYTES, blocksFor, MMA_ROWS_PER_BLOCK, quantForced, ROWS_MAX_THREADS, ROWS_UNITS, stateOf, THREADS, type Call, type Fp8Prep, type QuantizedX, type QuantState } from './cuda-quant-state.js';
import { asCuda, type CudaTensor } from './cuda-tensor.js';
import { check } from './driver.js';
import { floatTensor, invalid, requireCount, requireLength, requireRows } from './op-checks.js';

/**
 * PEREGRINE_FP8_TENSOR_ACT=1: FP8 linears with per-tensor weight scales take, at more tokens than the
 * decode paths serve ('cublas'), one dynamic activation scale per tensor (amax over the whole x / 448, as
 * vLLM's default FP8 does) instead of one per token, so cuBLASLt applies both scales as scalars and writes
 * the output directly (no f32 scratch + epilogue, which cuBLASLt's refusal of outer-vector scales on H100
 * forces for per-token scales). Off by default until measured: it changes the rounding of prefill
 * activations against the per-token CPU reference (by about FP8's own error).
 */
export const fp8TensorActivations = { enabled: process.env.PEREGRINE_FP8_TENSOR_ACT === '1' };

/**
 * Tokens from which FP8 GEMMs with per-token scales take cuBLASLt's outer-vector scaling (cuBLAS >= 12.9; both
 * scales applied inside the GEMM) rather than unscaled products into f32 scratch and our epilogue. Measured on an
 * H200 (2026-11-28, 8B shape): the outer-vector kernels win at 256 decode tokens and in prefill, lose at 64.
 * PEREGRINE_FP8_OUTER_VEC_MIN_M overrides (read once: the check runs on every FP8 linear of a large batch).
 */
const outerVecMinEnv = Number(process.env.PEREGRINE_FP8_OUTER_VEC_MIN_M);
const FP8_OUTER_VEC_MIN_M = Number.isInteger(outerVecMinEnv) && outerVecMinEnv > 0 ? outerVecMinEnv : 128;

/** x -> E4M3 [M, K] and per-token scales [M] in scratch (with `inputScale`, a device f32: that one scale). */
export function quantizeActivations(st: QuantState, c: Call, inputScale = c.inputScale?.ptr ?? null): QuantizedX {
  const dst = { xq: st.buf('xq', c.M * c.K), xs: st.buf('xs', c.M * 4) };
  quantizeInto(st, dst, c.x, c.M, c.K, inputScale);
  return dst;
}

/** One pass per row (quant_fp8_rows) where x allows, else quant_fp8_act. */
/** `inputScale`: a device f32 (one scale for every row), or null for per-row scales. */
function quantizeInto(st: QuantState, dst: QuantizedX, x: CudaTensor, M: number, K: number, inputScale: number | null): void {
  const units = K / 8;
  if (quantFastPolicy.fused && K % 8 === 0 && x.ptr % 16 === 0 && units <= ROWS_UNITS * ROWS_MAX_THREADS) {
    const threads = Math.min(ROWS_MAX_THREADS, Math.max(32, Math.ceil(units / 32) * 32)); // <= ROWS_UNITS units each
    st.kernel('quant_fp8_rows', x.dtype).launch(M, threads, 0, st.be.stream, [dst.xq, dst.xs, x.ptr, inputScale, K, FP8_MIN_ACTIVATION_SCALE]);
  } else {
    st.kernel('quant_fp8_act', x.dtype).launch(M, THREADS, 0, st.be.stream, [dst.xq, dst.xs, null, x.ptr, inputScale, K, FP8_MIN_ACTIVATION_SCALE]);
  }
}

/**
 * x quantized with one scale for the whole tensor (a static input scale, or amax / 448 computed on the
 * device), then cuBLASLt's FP8 GEMM with scalar scales straight into out. False (nothing queued) where
 * cuBLASLt refuses it or the weight needs padding rows: the caller takes the per-token path.
 */
export function fp8CublasScalar(st: QuantState, c: Call): boolean {
  const { M, N, K } = c;
  const prep = prepareFp8(st, c);
  const refuse = (why: string): false => {
    if (quantForced.scaling === 'scalar') throw new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', `linear: no scalar-scaled FP8 GEMM for M=${M} N=${N} K=${K}: ${why}`, { M, N, K });
    return false;
  };
  if (prep.Npad !== N) return refuse(`N is not a multiple of 16`);
  const drv = st.be.dev.drv;
  let scale = c.inputScale?.ptr ?? null;
  if (scale === null) {
    const amax = st.buf('amax', 32);
    scale = amax + 16; // cuBLASLt answers NOT_SUPPORTED for a scale pointer that is not 16-byte aligned
    check(drv, drv.cuMemsetD32Async(amax, 0, 1, st.be.stream.handle), 'cuMemsetD32Async');
    st.kernel('quant_fp8_amax', c.x.dtype).launch(Math.min(blocksFor(st, M * K), 4 * st.be.props.numSMs), THREADS, 0, st.be.stream, [amax, c.x.ptr, M * K]);
    st.kernel('quant_fp8_tensor_scale').launch(1, 32, 0, st.be.stream, [scale, amax, FP8_MIN_ACTIVATION_SCALE]);
  }
  const { xq } = quantizeActivations(st, c, scale);
  const ran = st.gemm.fp8({ out: c.out.ptr, outDtype: c.out.dtype as OutDtype, ldOut: N, xq, w: prep.w, M, N, K, scaling: 'scalar', aScale: c.scales.ptr, bScale: scale }, st.be.stream);
  if (!ran) return refuse(st.gemm.lastRefusal ?? 'cuBLASLt refused it'); // the quantized x is rewritten by the per-token path
  addBias(st, c);
  return true;
}

export function fp8Mma(st: QuantState, c: Call, { xq, xs }: QuantizedX): void {
  st.kernel('quant_fp8_mma', c.M <= 8 ? 'n1' : 'n2').launch(Math.ceil(c.N / MMA_ROWS_PER_BLOCK), THREADS, 0, st.be.stream, [
    c.out.ptr, xq, xs, c.qweight.ptr, c.scales.ptr, c.perTensor ? 1 : 0, c.bias?.ptr ?? null, c.M, c.N, c.K, c.outKind, c.biasKind,
  ]);
}

export function fp8Cublas(st: QuantState, c: Call, { xq, xs }: QuantizedX): void {
  const { M, N, K } = c;
  const prep = prepareFp8(st, c);
  const outDtype = c.out.dtype as OutDtype;
  if (N === prep.Npad && (quantForced.scaling === 'outer-vec' || (quantForced.scaling === null && st.outerVec && M >= FP8_OUTER_VEC_MIN_M))) {
    const ran = st.gemm.fp8({ out: c.out.ptr, outDtype, ldOut: N, xq, w: prep.w, M, N, K, scaling: 'outer-vec', aScale: scaleVector(st, c, prep), bScale: xs }, st.be.stream);
    if (ran) return addBias(st, c);
    st.outerVec = false;
    if (quantForced.scaling === 'outer-vec') throw new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', `linear: cuBLASLt refuses outer-vector FP8 scaling for M=${M} N=${N} K=${K}: ${st.gemm.lastRefusal ?? 'no reason given'}`, { M, N, K });
  }
  // unscaled products into f32 scratch, then our epilogue, a chunk of tokens at a time
  const outBytes = c.out.dtype === 'f32' ? 4 : 2;
  const chunk = Math.max(1, Math.floor(ACC_BYTES / (prep.Npad * 4)));
  for (let m0 = 0; m0 < M; m0 += chunk) {
    const mc = Math.min(chunk, M - m0);
    const acc = st.buf('acc', mc * prep.Npad * 4);
    const ran = st.gemm.fp8({ out: acc, outDtype: 'f32', ldOut: prep.Npad, xq: xq + m0 * K, w: prep.w, M: mc, N: prep.Npad, K, scaling: 'none', aScale: 0, bScale: 0 }, st.be.stream);
    if (!ran) {
      if (m0 === 0 && quantForced.path !== 'cublas') return dequantLinear(st, c);
      throw new PeregrineError('PGN_ERR_CUBLAS', `cuBLASLt has no FP8 GEMM for M=${mc} N=${prep.Npad} K=${K}`, { M: mc, N: prep.Npad, K });
    }
    st.kernel('quant_scale_out').launch(blocksFor(st, mc * N), THREADS, 0, st.be.stream, [
      c.out.ptr + m0 * N * outBytes, acc, prep.Npad, xs + m0 * 4, c.scales.ptr, c.perTensor ? 1 : 0, c.bias?.ptr ?? null, mc, N, c.outKind, c.biasKind,
    ]);
  }
}

function prepareFp8(st: QuantState, c: Call): Fp8Prep {
  const hit = st.fp8.get(c.w);
  if (hit) return hit;
  const { N, K } = c;
  const Npad = Math.ceil(N / 16) * 16;
  let w = c.qweight.ptr;
  if (Npad !== N) {
    const drv = st.be.dev.drv;
    w = st.alloc(Npad * K);
    check(drv, drv.cuMemcpyDtoDAsync(w, c.qweight.ptr, N * K, st.be.stream.handle), 'cuMemcpyDtoDAsync');
    check(drv, drv.cuMemsetD8Async(w + N * K, 0, (Npad - N) * K, st.be.stream.handle), 'cuMemsetD8Async');
  }
  const prep: Fp8Prep = { w, Npad, scaleVector: null };
  st.fp8.set(c.w, prep);
  return prep;
}

/** The weight scales as an f32 [N] vector: per-channel scales as they are, a per-tensor scale expanded once. */
function scaleVector(st: QuantState, c: Call, prep: Fp8Prep): number {
  if (!c.perTensor) return c.scales.ptr;
  if (prep.scaleVector === null) {
    prep.scaleVector = st.alloc(c.N * 4);
    st.kernel('quant_fill_f32').launch(blocksFor(st, c.N), THREADS, 0, st.be.stream, [prep.scaleVector, c.scales.ptr, c.N]);
  }
  return prep.scaleVector;
}

/**
 * xq = x [T, K] quantized to E4M3 as an FP8 linear with `inputScale` (null: per token) quantizes it: the
 * unfused counterpart of rmsNormFp8 (tests, benchmarks). quant_fp8_rows, or quant_fp8_act where x does not
 * suit it or PEREGRINE_QUANT_FAST=0.
 */
export function quantizeFp8Activations(be: CudaBackend, xq: Fp8Activations, xT: Tensor, numTokens: number, inputScaleT: Tensor | null): void {
  const op = 'quantizeFp8Activations';
  requireCount(numTokens, op, 'numTokens');
  const x = floatTensor(xT, op, 'x', ['bf16', 'f16']);
  const K = x.shape.at(-1)!;
  const codes = asCuda(xq.codes, op, 'xq.codes');
  const scales = floatTensor(xq.scales, op, 'xq.scales', ['f32']);
  requireRows(x, numTokens, K, op, 'x');
  if (codes.dtype !== 'i32' || K % 4 !== 0) throw invalid(op, `xq.codes must be i32 [${numTokens}, ${K / 4}], got ${codes.dtype} [${codes.shape.join(', ')}]`, { shape: codes.shape });
  requireRows(codes, numTokens, K / 4, op, 'xq.codes');
  requireLength(scales, numTokens, op, 'xq.scales');
  const inputScale = inputScaleT ? floatTensor(inputScaleT, op, 'inputScale', ['f32']) : null;
  if (inputScale) requireLength(inputScale, 1, op, 'inputScale');
  if (numTokens > 0) quantizeInto(stateOf(be), { xq: codes.ptr, xs: scales.ptr }, x, numTokens, K, inputScale?.ptr ?? null);
}

