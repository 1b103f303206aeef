/**
 * `linear` with a QuantizedWeight (backend.ts; issue 6) on the GPU, matching the CPU reference
 * (cpu/ops/quant-linear.ts). The path depends on the kind and the number of tokens M:
 * - 'qgemv'   every kind, M <= 8 (cuda-quant-gemv.ts says where): the decode GEMV streaming the weights
 *             through a cp.async ring; FP8 activations come from the fused norm (`xq`), or are quantized in it
 *             (<= 2 tokens) or by one quant_fp8_rows pass first. FP8 weights of > 8192 rows with quantized x
 *             go to 'mma' instead, which measured faster there;
 * - 'mma'     fp8, M <= FP8_MMA_MAX_M, sm_89+: activations quantized to E4M3 (static input scale, or per
 *             token), then a tensor-core GEMV (mma m16n8k32 e4m3) applying both scales and the bias;
 * - 'cublas'  fp8, more tokens, sm_89+: the same quantization (none when the fused norm gave `xq`; else one
 *             pass per row, quant_fp8_rows), then cuBLASLt's FP8 GEMM with outer-vector
 *             scales (per token x per channel) straight into out; where cuBLASLt refuses that (cuBLAS 13.1 on an
 *             H100 does) or N % 16 != 0, an unscaled product into f32 scratch and our scale epilogue;
 * - 'gemv'    int8 / int4, M <= INT_GEMV_MAX_M: a dequantizing GEMV (unpack, scale, FMA, f32 accumulation);
 * - 'igemm'   int8 / int4, up to 512 tokens, under PEREGRINE_INT_GEMM=1 (not yet measured): a tiled GEMM dequantizing
 *             64-k chunks of the codes into shared memory (cuda-quant-igemm.ts);
 * - 'dequant' everything else (and fp8 before sm_89): the weight dequantized tile by tile into the activation
 *             dtype, each tile through the half GEMM (fp8 activations quantized and dequantized first). Weights
 *             round to bf16 / f16 on this path, so it is within that dtype's tolerance of the reference.
 * FP8 weights need no repacking: the i32 words already are the [N, K] E4M3 bytes cuBLASLt reads. A zero-padded
 * copy (N rounded up to 16) and the expanded per-tensor scale vector are made once per weight, cached.
 * Scratch only grows; a replaced buffer stays allocated until disposeQuant, as captured graphs may read it.
 */
import { PeregrineError } from '../../errors.js';
import { numel, type Fp8Activations, type QuantizedWeight, type Tensor } from '../backend.js';
import { FP8_MIN_ACTIVATION_SCALE } from '../../weights/quant/fp8.js';
import type { CudaBackend } from './cuda-backend.js';
import { dequantLinear } from './cuda-quant-dequant.js';
import { igemm, igemmCan, igemmPolicy } from './cuda-quant-igemm.js';
import { fp8Cublas, fp8CublasScalar, fp8Mma, fp8TensorActivations, quantizeActivations } from './cuda-quant-fp8.js';
import type { OutDtype } from './cuda-quant-gemm.js';
import { BIAS_KIND, OUT_KIND, QGEMV_FP8_QUANT_MAX_M, QGEMV_STAGES, QGEMV_THREADS, qgemvCan, qgemvStages, qgemvChunkM, qgemvGrid, qgemvGroupShift, qgemvSharedBytes, quantFastPolicy } from './cuda-quant-gemv.js';
import {
  FP8_MMA_MAX_M, GEMV_CHUNK, GEMV_KERNEL_MAX_M, GEMV_ROWS_PER_WARP, GEMV_WARPS, INT_GEMV_MAX_M, KIND_CODE, MMA_KERNEL_MAX_M, quantForced,
  stateOf, THREADS, VALUES_PER_WORD, type Call, type QuantizedX, type QuantPath, type QuantState,
} from './cuda-quant-state.js';
import { asCuda } from './cuda-tensor.js';
import { floatTensor, invalid, requireCount, requireLength, requireRows } from './op-checks.js';

export { forceFp8Scaling, forceQuantPath, disposeQuant, INT_GEMV_MAX_M, FP8_MMA_MAX_M, type QuantPath } from './cuda-quant-state.js';
export { fp8TensorActivations, quantizeFp8Activations } from './cuda-quant-fp8.js';

/**
 * out [T, N] = x [T, K] @ dequant(w)^T (+ bias), as the CPU reference computes it.
 * @param xq fp8: x already quantized for w (Backend.linear's contract); used where a path reads E4M3 x.
 */
export function quantLinear(be: CudaBackend, outT: Tensor, xT: Tensor, w: QuantizedWeight, biasT: Tensor | null, numTokens: number, xq: Fp8Activations | null = null): void {
  const c = checkCall(w, outT, xT, biasT, numTokens, xq);
  if (c.M === 0) return;
  const st = stateOf(be);
  const path = quantPathFor(be, w, c.M, c.x, c.xq !== null);
  if (path === 'qgemv') return qgemv(st, c, c.w.kind === 'fp8' && !c.xq && c.M > QGEMV_FP8_QUANT_MAX_M ? quantizeActivations(st, c) : null);
  if (path === 'gemv') return gemv(st, c);
  if (path === 'igemm') return igemm(st, c);
  if (path === 'dequant') return dequantLinear(st, c);
  if (path === 'cublas' && fp8TensorActivations.enabled && c.perTensor && fp8CublasScalar(st, c)) return;
  const a = c.xq ? { xq: c.xq.codes.ptr, xs: c.xq.scales.ptr } : quantizeActivations(st, c);
  if (path === 'mma') return fp8Mma(st, c, a);
  fp8Cublas(st, c, a);
}

/**
 * The path `quantLinear` takes for `numTokens` tokens of x (forceQuantPath wins; it throws if the path cannot
 * run); `hasXq`: fp8 x comes quantized (or, past QGEMV_FP8_QUANT_MAX_M tokens, will be).
 */
export function quantPathFor(be: CudaBackend, w: QuantizedWeight, numTokens: number, x: Tensor, hasXq = false): QuantPath {
  const [, K] = w.shape;
  const xAligned = asCuda(x, 'linear', 'x').ptr % 16 === 0;
  const [major, minor] = be.props.computeCapability;
  const fp8Cores = major * 10 + minor >= 89;
  const qgemvAligned = xAligned && asCuda(w.qweight, 'linear', 'qweight').ptr % 16 === 0;
  const can: Record<QuantPath, boolean> = {
    qgemv: qgemvAligned && qgemvCan({ kind: w.kind, M: numTokens, K, groupSize: w.groupSize }, { fp8Cores, maxSharedBytesPerBlock: be.props.maxSharedBytesPerBlock }),
    mma: w.kind === 'fp8' && fp8Cores && numTokens <= MMA_KERNEL_MAX_M && K % 64 === 0,
    cublas: w.kind === 'fp8' && fp8Cores && K % 16 === 0,
    gemv: w.kind !== 'fp8' && numTokens <= GEMV_KERNEL_MAX_M && K % GEMV_CHUNK[w.kind] === 0 && w.groupSize % GEMV_CHUNK[w.kind] === 0 && xAligned,
    igemm: qgemvAligned && igemmCan(w.kind, K, w.groupSize),
    dequant: true,
  };
  if (quantForced.path) {
    if (!can[quantForced.path]) throw new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', `linear: path '${quantForced.path}' cannot run ${w.kind} [${w.shape.join(', ')}] with ${numTokens} tokens`, { path: quantForced.path, kind: w.kind });
    return quantForced.path;
  }
  if (can.qgemv && quantFastPolicy.qgemv && numTokens <= quantFastPolicy.maxM) {
    const quantized = hasXq || numTokens > QGEMV_FP8_QUANT_MAX_M;
    if (w.kind !== 'fp8' || !quantized || w.shape[0] <= quantFastPolicy.fp8MaxN || !can.mma) return 'qgemv';
    return 'mma';
  }
  if (w.kind === 'fp8') return can.mma && numTokens <= FP8_MMA_MAX_M ? 'mma' : can.cublas ? 'cublas' : 'dequant';
  if (can.gemv && numTokens <= INT_GEMV_MAX_M) return 'gemv';
  return can.igemm && igemmPolicy.enabled && numTokens <= igemmPolicy.maxM ? 'igemm' : 'dequant';
}

/**
 * Whether quantLinear of `w` over `numTokens` tokens, given x already quantized (`xq`, 16-byte aligned), still
 * reads x itself: the dequantizing path and per-tensor activation scales do; the GEMVs and cuBLASLt read the
 * codes alone. Lets the fused producers of xq skip writing x (cuda-quant-norm.ts).
 */
export function fp8LinearReadsX(be: CudaBackend, w: QuantizedWeight, numTokens: number, x: Tensor): boolean {
  if (w.kind !== 'fp8') return true;
  const path = quantPathFor(be, w, numTokens, x, true);
  return path === 'dequant' || (path === 'cublas' && fp8TensorActivations.enabled && numel(w.scales.shape) === 1);
}

function checkCall(w: QuantizedWeight, outT: Tensor, xT: Tensor, biasT: Tensor | null, numTokens: number, xqT: Fp8Activations | null): Call {
  const op = 'linear';
  requireCount(numTokens, op, 'numTokens');
  if (!(w.kind in KIND_CODE)) throw new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', `the CUDA backend has no kernels for '${String(w.kind)}' quantized weights`, { kind: w.kind });
  const [N, K] = w.shape;
  const x = floatTensor(xT, op, 'x', ['bf16', 'f16']);
  const out = floatTensor(outT, op, 'out');
  if (out.dtype !== 'f32' && out.dtype !== x.dtype) throw invalid(op, `out must be ${x.dtype} or f32, got ${out.dtype}`, { dtype: out.dtype });
  requireRows(x, numTokens, K, op, 'x');
  requireRows(out, numTokens, N, op, 'out');
  const bias = biasT ? floatTensor(biasT, op, 'bias') : null;
  if (bias) requireLength(bias, N, op, 'bias');
  const qweight = asCuda(w.qweight, op, 'qweight');
  const vpw = VALUES_PER_WORD[w.kind];
  if (qweight.dtype !== 'i32' || K % vpw !== 0 || qweight.numel !== (N * K) / vpw) {
    throw invalid(op, `${w.kind} qweight of [${N}, ${K}] must be i32 [${N}, ${K / vpw}], got ${qweight.dtype} [${qweight.shape.join(', ')}]`, { shape: qweight.shape });
  }
  const numG = Math.ceil(K / w.groupSize);
  const scales = floatTensor(w.scales, op, 'scales', ['f32']);
  const perTensor = w.kind === 'fp8' && scales.numel === 1;
  const wantScales = w.kind === 'fp8' ? (perTensor ? 1 : N) : N * numG;
  if (scales.numel !== wantScales) throw invalid(op, `${w.kind} scales hold ${scales.numel} values, expected ${wantScales}`, { shape: scales.shape });
  const zeros = w.zeros && w.kind === 'int4' ? floatTensor(w.zeros, op, 'zeros', ['f32']) : null;
  if (zeros && zeros.numel !== N * numG) throw invalid(op, `int4 zeros hold ${zeros.numel} values, expected ${N * numG}`, { shape: zeros.shape });
  const inputScale = w.inputScale && w.kind === 'fp8' ? floatTensor(w.inputScale, op, 'inputScale', ['f32']) : null;
  if (inputScale) requireLength(inputScale, 1, op, 'inputScale');
  const outKind = OUT_KIND[out.dtype as OutDtype];
  const biasKind = bias ? BIAS_KIND[bias.dtype as OutDtype] : 0;
  const xq = w.kind === 'fp8' && xqT ? checkXq(xqT, numTokens, K) : null;
  return { w, out, x, bias, qweight, scales, zeros, inputScale, xq, M: numTokens, N, K, perTensor, outKind, biasKind };
}

/** The fused norm's E4M3 x for this call; null (x is quantized here instead) where its codes are not 16-byte aligned. */
function checkXq(xqT: Fp8Activations, M: number, K: number): Call['xq'] {
  const op = 'linear';
  const codes = asCuda(xqT.codes, op, 'xq.codes');
  const scales = floatTensor(xqT.scales, op, 'xq.scales', ['f32']);
  if (codes.dtype !== 'i32' || codes.shape.at(-1) !== K / 4 || codes.numel < (M * K) / 4) {
    throw invalid(op, `xq.codes must be i32 [>= ${M}, ${K / 4}] (E4M3 x of ${M} tokens), got ${codes.dtype} [${codes.shape.join(', ')}]`, { shape: codes.shape });
  }
  if (scales.numel < M) throw invalid(op, `xq.scales hold ${scales.numel} values, expected >= ${M}`, { shape: scales.shape });
  return codes.ptr % 16 === 0 ? { codes, scales } : null;
}

function gemv(st: QuantState, c: Call): void {
  const mt = c.M <= 1 ? 1 : c.M <= 2 ? 2 : c.M <= 4 ? 4 : 8;
  st.kernel('quant_gemv', `${c.w.kind}_${c.x.dtype}_m${mt}`).launch(Math.ceil(c.N / (GEMV_WARPS * GEMV_ROWS_PER_WARP)), 32 * GEMV_WARPS, 0, st.be.stream, [
    c.out.ptr, c.x.ptr, c.qweight.ptr, c.scales.ptr, c.zeros?.ptr ?? null, c.bias?.ptr ?? null, c.M, c.N, c.K, c.w.groupSize, c.outKind, c.biasKind,
  ]);
}

/**
 * The decode GEMV (kernels/quant_gemv.cu): one launch per chunk of tokens whose x fits a block (one for <= 8
 * tokens but int formats of long rows), any kind; fp8 reads quantized x (the fused norm's, or `a`) or
 * quantizes x itself.
 */
function qgemv(st: QuantState, c: Call, a: QuantizedX | null): void {
  const { N, K, w } = c;
  const q = c.xq ? { xq: c.xq.codes.ptr, xs: c.xq.scales.ptr } : a;
  const stages = qgemvStages(w.kind, K);
  const deep = stages !== QGEMV_STAGES ? `_s${stages}` : '';
  const name = `${w.kind !== 'fp8' ? `${w.kind}_${c.x.dtype}` : q ? 'fp8q' : `fp8_${c.x.dtype}`}${deep}`;
  const kernel = st.kernel('qgemv', name);
  const chunk = qgemvChunkM(w.kind, K, st.be.props.maxSharedBytesPerBlock);
  const outBytes = c.out.dtype === 'f32' ? 4 : 2;
  for (let m0 = 0; m0 < c.M; m0 += chunk) {
    const M = Math.min(chunk, c.M - m0);
    const shared = qgemvSharedBytes(w.kind, M, K);
    const grid = qgemvGrid(N, shared, st.be.props.numSMs, st.be.props.maxSharedBytesPerBlock);
    kernel.launch(grid, QGEMV_THREADS, shared, st.be.stream, [
      c.out.ptr + m0 * N * outBytes, c.x.ptr + m0 * K * 2, q ? q.xq + m0 * K : null, q ? q.xs + m0 * 4 : null, c.inputScale?.ptr ?? null, c.qweight.ptr,
      c.scales.ptr, c.zeros?.ptr ?? null, c.bias?.ptr ?? null, M, N, K, qgemvGroupShift(w.kind, K, w.groupSize)!, c.perTensor ? 1 : 0, c.outKind, c.biasKind,
      FP8_MIN_ACTIVATION_SCALE,
    ]);
  }
}

/** Fills an i32 tensor with random words AND `mask` on the device (code tensors for benchmarks). */
export function fillCodes(be: CudaBackend, t: Tensor, seed: number, mask: number): void {
  const c = asCuda(t, 'fillCodes', 'tensor');
  if (c.numel === 0) return;
  stateOf(be).kernel('quant_fill_codes').launch(Math.max(1, Math.min(Math.ceil(c.numel / THREADS), be.props.numSMs * 16)), THREADS, 0, be.stream, [c.ptr, c.numel, seed >>> 0, mask >>> 0]);
}
