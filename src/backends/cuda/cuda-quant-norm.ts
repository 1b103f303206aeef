/**
 * The kernels that produce an FP8 linear's input, fused with its quantization (issue 6; kernels/norm.cu): RMSNorm
 * (rms_norm_fp8, feeding qkv_proj / gate_up_proj) and SiLU * up (silu_mul_fp8, feeding down_proj) also write
 * their output as E4M3 codes and per-token scales (`Fp8Activations`), so the linear's own quantization pass
 * disappears (decode GEMV and cuBLASLt FP8 alike). `out` (and the residual) are those of `rmsNorm` / `siluMul`
 * bit for bit; the codes and scales are those the linear would make from `out`. Given `onlyReader` (the FP8 linear
 * that is out's only reader), `out` is not written where that linear's path reads the codes alone
 * (fp8LinearReadsX): one [T, width] store less.
 *
 * Only the vector path fuses (width % 8 == 0, 16-byte aligned rows, bf16 / f16); elsewhere, or with
 * PEREGRINE_QUANT_FAST=0, they return false and the caller runs the unfused op.
 */
import type { Fp8Activations, QuantizedWeight, Tensor } from '../backend.js';
import { FP8_MIN_ACTIVATION_SCALE } from '../../weights/quant/fp8.js';
import type { CudaBackend } from './cuda-backend.js';
import { quantFastPolicy } from './cuda-quant-gemv.js';
import { fp8LinearReadsX } from './cuda-quant.js';
import type { ParamKind } from './module.js';
import { gatedArgs, normArgs, rowThreads } from './cuda-ops.js';
import { floatTensor, i32Tensor, invalid, lastDim, requireLength } from './op-checks.js';

const PACK = 8;
// (out, xq, xs, x, residual, weight, eps, weightOffset, H, inputScale, minScale)
const PARAMS: readonly ParamKind[] = ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'f32', 'f32', 'i32', 'ptr', 'f32'];
// (out, xq, xs, gateUp, I, inputScale, minScale)
const SILU_PARAMS: readonly ParamKind[] = ['ptr', 'ptr', 'ptr', 'ptr', 'i32', 'ptr', 'f32'];

/** Threads of a row: rowThreads(H, 8), which rms_norm uses; the same count keeps `out` identical. */
export const normRowThreads = (H: number): number => rowThreads(H, PACK);

/** Tests: the silu_mul_fp8 kernel to take whatever the row count (null: by rows, siluFp8Launch). */
export const siluFp8Forced: { variant: 'few' | 'many' | 'cluster' | null } = { variant: null };

/** blocks a row of silu_mul_fp8_cl (kernels/norm.cu SILU_CLUSTER) */
export const SILU_CLUSTER = 8;
/** PEREGRINE_SILU_CLUSTER=0: never the cluster kernel (for comparisons) */
const siluClusterEnabled = process.env.PEREGRINE_SILU_CLUSTER !== '0';

/**
 * silu_mul_fp8's kernel, threads and blocks for `rows` rows of I. From 4 rows an SM, silu_mul_fp8_k8 (8 packs a thread
 * in up to 256 threads: several blocks an SM); with clusters (sm_90+) and at most one block an SM when each row takes
 * SILU_CLUSTER blocks, silu_mul_fp8_cl (a row over a cluster, one pack a thread); else silu_mul_fp8 (2 packs a
 * thread in up to 1024, rmsNorm's count), one block a row.
 */
export function siluFp8Launch(I: number, rows: number, numSMs: number, clusters = false): { kernel: string; threads: number; blocks: number } {
  const forced = siluFp8Forced.variant;
  const variant = forced ?? (rows >= 4 * numSMs ? 'many' : clusters && siluClusterEnabled && rows * SILU_CLUSTER <= numSMs ? 'cluster' : 'few');
  if (variant === 'many') return { kernel: 'silu_mul_fp8_k8', threads: rowThreads(I, 8 * PACK, 256), blocks: rows };
  if (variant === 'cluster') return { kernel: 'silu_mul_fp8_cl', threads: rowThreads(Math.ceil(I / PACK / SILU_CLUSTER) * PACK, PACK), blocks: rows * SILU_CLUSTER };
  return { kernel: 'silu_mul_fp8', threads: normRowThreads(I), blocks: rows };
}

/** rmsNorm + E4M3 codes / scales of its output in `xq` (Backend.rmsNormFp8); false where it cannot fuse. */
export function rmsNormFp8(
  be: CudaBackend, outT: Tensor, xT: Tensor, weightT: Tensor, eps: number, numTokens: number,
  residualT: Tensor | null, weightOffset: number, xq: Fp8Activations, inputScaleT: Tensor | null, onlyReader?: QuantizedWeight,
): boolean {
  const op = 'rmsNormFp8';
  const { x, out, weight, residual, H } = normArgs(op, outT, xT, weightT, numTokens, residualT);
  const { codes, scales, inputScale } = fp8Outputs(op, xq, inputScaleT, numTokens, H);
  const aligned = [x, out, weight, residual, codes].every((t) => t === null || t.ptr % 16 === 0);
  if (!quantFastPolicy.fused || x.dtype === 'f32' || H % PACK !== 0 || !aligned) return false;
  if (numTokens === 0) return true;
  be.kernels.module.kernel(`rms_norm_fp8_${x.dtype}`, PARAMS).launch(numTokens, normRowThreads(H), 0, be.stream, [
    outPtr(be, out.ptr, x, numTokens, onlyReader), codes.ptr, scales.ptr, x.ptr, residual?.ptr ?? null, weight.ptr, eps, weightOffset, H, inputScale?.ptr ?? null, FP8_MIN_ACTIVATION_SCALE,
  ]);
  return true;
}

/** siluMul + E4M3 codes / scales of its output in `xq` (Backend.siluMulFp8); false where it cannot fuse. */
export function siluMulFp8(
  be: CudaBackend, outT: Tensor, gateUpT: Tensor, numTokens: number, xq: Fp8Activations, inputScaleT: Tensor | null, onlyReader?: QuantizedWeight,
): boolean {
  const op = 'siluMulFp8';
  const { gateUp, out, I } = gatedArgs(op, outT, gateUpT, numTokens);
  const { codes, scales, inputScale } = fp8Outputs(op, xq, inputScaleT, numTokens, I);
  const aligned = [gateUp, out, codes].every((t) => t.ptr % 16 === 0);
  if (!quantFastPolicy.fused || out.dtype === 'f32' || I % PACK !== 0 || !aligned) return false;
  if (numTokens === 0) return true;
  const clusters = be.props.computeCapability[0] >= 9;
  const { kernel, threads, blocks } = siluFp8Launch(I, numTokens, be.props.numSMs, clusters);
  be.kernels.module.kernel(`${kernel}_${out.dtype}`, SILU_PARAMS).launch(blocks, threads, 0, be.stream, [
    outPtr(be, out.ptr, out, numTokens, onlyReader), codes.ptr, scales.ptr, gateUp.ptr, I, inputScale?.ptr ?? null, FP8_MIN_ACTIVATION_SCALE,
  ]);
  return true;
}

/** `out`'s pointer, or null where its only reader, an FP8 linear given the codes, would not read it. */
function outPtr(be: CudaBackend, ptr: number, x: Tensor, numTokens: number, onlyReader: QuantizedWeight | undefined): number | null {
  return onlyReader && !fp8LinearReadsX(be, onlyReader, numTokens, x) ? null : ptr;
}

/** The checked E4M3 outputs of a fused producer: codes i32 [>= numTokens, width / 4], scales f32 [>= numTokens], the optional static scale. */
function fp8Outputs(op: string, xq: Fp8Activations, inputScaleT: Tensor | null, numTokens: number, width: number) {
  const codes = i32Tensor(xq.codes, op, 'xq.codes', (numTokens * width) / 4);
  if (width % 4 !== 0 || lastDim(codes) !== width / 4) {
    throw invalid(op, `xq.codes must be i32 [>= ${numTokens}, ${width / 4}] (E4M3 of rows of ${width}), got [${codes.shape.join(', ')}]`, { shape: codes.shape });
  }
  const scales = floatTensor(xq.scales, op, 'xq.scales', ['f32']);
  if (scales.numel < numTokens) throw invalid(op, `xq.scales hold ${scales.numel} values, expected >= ${numTokens}`, { shape: scales.shape });
  const inputScale = inputScaleT ? floatTensor(inputScaleT, op, 'inputScale', ['f32']) : null;
  if (inputScale) requireLength(inputScale, 1, op, 'inputScale');
  return { codes, scales, inputScale };
}
