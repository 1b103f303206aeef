/**
 * RMSNorm fused with FP8 activation quantization (issue 6; kernels/norm.cu rms_norm_fp8): the norm that feeds an
 * FP8 linear also writes its output as E4M3 codes and per-token scales (`Fp8Activations`), so the linear's own
 * quantization pass disappears (decode GEMV and cuBLASLt FP8 alike). `out` and the residual are those of
 * `rmsNorm` bit for bit (same kernel body and block size); the codes and scales are those the linear would make
 * from `out`.
 *
 * Only the vector path fuses (H % 8 == 0, 16-byte aligned rows, bf16 / f16); elsewhere, or with
 * PEREGRINE_QUANT_FAST=0, `rmsNormFp8` returns false and the caller runs rmsNorm.
 */
import type { Fp8Activations, Tensor } from '../backend.js';
import { FP8_MIN_ACTIVATION_SCALE } from '../../weights/quant/fp8.js';
import type { CudaBackend } from './cuda-backend.js';
import { quantFastPolicy } from './cuda-quant-gemv.js';
import type { CudaTensor } from './cuda-tensor.js';
import type { ParamKind } from './module.js';
import { normArgs } from './cuda-ops.js';
import { floatTensor, i32Tensor, invalid, lastDim, requireLength } from './op-checks.js';

const PACK = 8;
// (out, xq, xs, x, residual, weight, eps, weightOffset, H, inputScale, minScale)
const PARAMS: readonly ParamKind[] = ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'f32', 'f32', 'i32', 'ptr', 'f32'];

/** Threads of a row: cuda-ops.ts rowThreads(H, 8), which rms_norm uses; the same count keeps `out` identical. */
export function normRowThreads(H: number): number {
  const units = Math.ceil(H / PACK);
  return Math.min(1024, Math.max(32, Math.ceil(units / 32) * 32));
}

/** rmsNorm + E4M3 codes / scales of its output in `xq` (Backend.rmsNormFp8); false where it cannot fuse. */
export function rmsNormFp8(
  be: CudaBackend, outT: Tensor, xT: Tensor, weightT: Tensor, eps: number, numTokens: number,
  residualT: Tensor | null, weightOffset: number, xq: Fp8Activations, inputScaleT: Tensor | null,
): boolean {
  const op = 'rmsNormFp8';
  const { x, out, weight, residual, H } = normArgs(op, outT, xT, weightT, numTokens, residualT);
  const codes = asCodes(xq.codes, numTokens, H);
  const scales = floatTensor(xq.scales, op, 'xq.scales', ['f32']);
  if (scales.numel < numTokens) throw invalid(op, `xq.scales hold ${scales.numel} values, expected >= ${numTokens}`, { shape: scales.shape });
  const inputScale = inputScaleT ? floatTensor(inputScaleT, op, 'inputScale', ['f32']) : null;
  if (inputScale) requireLength(inputScale, 1, op, 'inputScale');
  const aligned = [x, out, weight, residual, codes].every((t) => t === null || t.ptr % 16 === 0);
  if (!quantFastPolicy.fused || x.dtype === 'f32' || H % PACK !== 0 || !aligned) return false;
  if (numTokens === 0) return true;
  be.kernels.module.kernel(`rms_norm_fp8_${x.dtype}`, PARAMS).launch(numTokens, normRowThreads(H), 0, be.stream, [
    out.ptr, codes.ptr, scales.ptr, x.ptr, residual?.ptr ?? null, weight.ptr, eps, weightOffset, H, inputScale?.ptr ?? null, FP8_MIN_ACTIVATION_SCALE,
  ]);
  return true;
}

function asCodes(t: Tensor, numTokens: number, H: number): CudaTensor {
  const codes = i32Tensor(t, 'rmsNormFp8', 'xq.codes', (numTokens * H) / 4);
  if (H % 4 !== 0 || lastDim(codes) !== H / 4) {
    throw invalid('rmsNormFp8', `xq.codes must be i32 [>= ${numTokens}, ${H / 4}] (E4M3 of rows of ${H}), got [${codes.shape.join(', ')}]`, { shape: codes.shape });
  }
  return codes;
}
