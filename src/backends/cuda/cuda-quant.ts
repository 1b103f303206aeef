/**
 * `linear` with a QuantizedWeight (backend.ts; issue 6) on the GPU, matching the CPU reference
 * (cpu/ops/quant-linear.ts). The path depends on the kind and the number of tokens M:
 * - 'qgemv'   every kind, M <= 8 (cuda-quant-gemv.ts says where): the decode GEMV streaming the weights
 *             through a cp.async ring; FP8 activations come from the fused norm (`xq`), or are quantized in it
 *             (<= 2 tokens) or by one quant_fp8_rows pass first. FP8 weights of > 4096 rows with quantized x
 *             go to 'mma' instead, which measured faster there;
 * - 'mma'     fp8, M <= FP8_MMA_MAX_M, sm_89+: activations quantized to E4M3 (static input scale, or per
 *             token), then a tensor-core GEMV (mma m16n8k32 e4m3) applying both scales and the bias;
 * - 'cublas'  fp8, more tokens, sm_89+: the same quantization (none when the fused norm gave `xq`; else one
 *             pass per row, quant_fp8_rows), then cuBLASLt's FP8 GEMM with outer-vector
 *             scales (per token x per channel) straight into out; where cuBLASLt refuses that (cuBLAS 13.1 on an
 *             H100 does) or N % 16 != 0, an unscaled product into f32 scratch and our scale epilogue;
 * - 'gemv'    int8 / int4, M <= INT_GEMV_MAX_M: a dequantizing GEMV (unpack, scale, FMA, f32 accumulation);
 * - 'dequant' everything else (and fp8 before sm_89): the weight dequantized tile by tile into the activation
 *             dtype, each tile through the half GEMM (fp8 activations quantized and dequantized first). Weights
 *             round to bf16 / f16 on this path, so it is within that dtype's tolerance of the reference.
 * FP8 weights need no repacking: the i32 words already are the [N, K] E4M3 bytes cuBLASLt reads. A zero-padded
 * copy (N rounded up to 16) and the expanded per-tensor scale vector are made once per weight, cached.
 * Scratch only grows; a replaced buffer stays allocated until disposeQuant, as captured graphs may read it.
 */
import { PeregrineError } from '../../errors.js';
import type { Fp8Activations, QuantizedWeight, Tensor } from '../backend.js';
import { FP8_MIN_ACTIVATION_SCALE } from '../../weights/quant/fp8.js';
import type { CudaBackend } from './cuda-backend.js';
import { QuantGemm, type Fp8Scaling, type OutDtype } from './cuda-quant-gemm.js';
import { BIAS_KIND, OUT_KIND, QGEMV_PARAMS, QGEMV_FP8_QUANT_MAX_M, QGEMV_THREADS, qgemvCan, qgemvChunkM, qgemvGrid, qgemvGroupShift, qgemvSharedBytes, quantFastPolicy } from './cuda-quant-gemv.js';
import { asCuda, type CudaTensor } from './cuda-tensor.js';
import { check } from './driver.js';
import type { Kernel, ParamKind } from './module.js';
import { floatTensor, invalid, requireCount, requireLength, requireRows } from './op-checks.js';

export type QuantPath = 'qgemv' | 'mma' | 'cublas' | 'gemv' | 'dequant';

/**
 * int8 / int4: most tokens for the GEMV (H100, 8B shapes: at 4 and 8 tokens it beats dequantized tiles + GEMM
 * on gate_up 2.7x / 1.6x, and is even with it on o_proj / down_proj at 8)
 */
export const INT_GEMV_MAX_M = 8;
/** fp8: most tokens for the tensor-core GEMV (H100: ahead of cuBLASLt at 1 token, behind at 16) */
export const FP8_MMA_MAX_M = 8;
const GEMV_KERNEL_MAX_M = 8;
/** quant_fp8_mma takes two 8-token tiles */
const MMA_KERNEL_MAX_M = 16;
/** bytes of one dequantized weight tile (fits the 50 MiB L2 of an H100 with the GEMM's operands) */
const TILE_BYTES = 32 << 20;
/** tile rows are a multiple of this, so each tile's output columns start 256-byte aligned */
const TILE_ROW_ALIGN = 128;
/** f32 scratch for unscaled FP8 products, filled in chunks of tokens */
const ACC_BYTES = 64 << 20;
const GEMM_WORKSPACE_BYTES = 32 << 20;
const THREADS = 256;
/** quant_fp8_rows: 16-byte units a thread holds, threads a block has at most */
const ROWS_UNITS = 8;
const ROWS_MAX_THREADS = 1024;
const GEMV_WARPS = 4;
/** quant_gemv's rows per warp */
const GEMV_ROWS_PER_WARP = 2;
const MMA_ROWS_PER_BLOCK = 16;
const KIND_CODE = { fp8: 0, int8: 1, int4: 2 } as const;
const VALUES_PER_WORD = { fp8: 4, int8: 4, int4: 8 } as const;
/** values per 16-byte chunk of a GEMV lane */
const GEMV_CHUNK = { int8: 16, int4: 32 } as const;

const p = 'ptr' as const, i32 = 'i32' as const, i64 = 'i64' as const, u32 = 'u32' as const, f32 = 'f32' as const;
/** parameter lists of kernels/quant.cu, by kernel name prefix */
const PARAMS = {
  quant_fp8_act: [p, p, p, p, p, i32, f32], // (xq, rowScales, xfq, x, inputScale, K, minScale)
  quant_fp8_rows: [p, p, p, p, i32, f32], // (xq, rowScales, x, inputScale, K, minScale)
  qgemv: QGEMV_PARAMS,
  quant_dequant: [p, p, p, p, i32, i32, i32, i32, i32, i32], // (out, qw, scales, zeros, kind, n0, rows, K, groupSize, perTensor)
  quant_gemv: [p, p, p, p, p, p, i32, i32, i32, i32, i32, i32], // (out, x, qw, scales, zeros, bias, M, N, K, groupSize, outKind, biasKind)
  quant_fp8_mma: [p, p, p, p, p, i32, p, i32, i32, i32, i32, i32], // (out, xq, xs, w, ws, wsPerTensor, bias, M, N, K, outKind, biasKind)
  quant_scale_out: [p, p, i32, p, p, i32, p, i32, i32, i32, i32], // (out, acc, ldAcc, xs, ws, wsPerTensor, bias, M, N, outKind, biasKind)
  quant_bias_add: [p, p, i32, i32, i32, i32], // (out, bias, M, N, outKind, biasKind)
  quant_fill_f32: [p, p, i32], // (out, src, n)
  quant_fill_codes: [p, i64, u32, u32], // (out, n, seed, mask)
  quant_fp8_amax: [p, p, i64], // (amaxBits, x, n)
  quant_fp8_tensor_scale: [p, p, f32], // (scale, amaxBits, minScale)
} as const satisfies Record<string, readonly ParamKind[]>;

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

let forcedPath: QuantPath | null = null;
let forcedScaling: Fp8Scaling | null = null;

/** Tests and benchmarks: run every quantized linear through `path` (it must suit the call), or null to choose. */
export function forceQuantPath(path: QuantPath | null): void {
  forcedPath = path;
}

/**
 * Tests and benchmarks: the FP8 cuBLASLt scaling to use ('none' = f32 scratch + epilogue), or null to choose;
 * a forced 'outer-vec' or 'scalar' (with fp8TensorActivations) the library refuses throws, naming why.
 */
export function forceFp8Scaling(scaling: Fp8Scaling | null): void {
  forcedScaling = scaling;
}

/** A device buffer that only grows, for one backend's quantized linears. */
class GrowBuffer {
  ptr = 0;
  bytes = 0;
}

class QuantState {
  readonly be: CudaBackend;
  readonly buffers = new Map<string, GrowBuffer>();
  /** retired buffers and per-weight copies, freed by disposeQuant */
  readonly owned: number[] = [];
  readonly fp8 = new WeakMap<QuantizedWeight, Fp8Prep>();
  /** cuBLASLt has not refused outer-vector FP8 scaling yet (cuBLAS 13.1 on an H100 does refuse it) */
  outerVec = true;
  #gemm: QuantGemm | null = null;

  constructor(be: CudaBackend) {
    this.be = be;
  }

  get gemm(): QuantGemm {
    if (!this.#gemm) {
      const ws = this.alloc(GEMM_WORKSPACE_BYTES);
      this.#gemm = new QuantGemm(this.be.dev.drv, ws, GEMM_WORKSPACE_BYTES, Math.floor(this.be.props.driverVersion / 1000));
    }
    return this.#gemm;
  }

  alloc(bytes: number): number {
    const ptr = this.be.allocator.alloc(bytes);
    this.owned.push(ptr);
    return ptr;
  }

  buf(name: string, bytes: number): number {
    let b = this.buffers.get(name);
    if (!b) this.buffers.set(name, (b = new GrowBuffer()));
    if (bytes > b.bytes) {
      if (b.ptr) this.owned.push(b.ptr);
      b.bytes = Math.max(bytes, Math.ceil(b.bytes * 1.5));
      b.ptr = this.be.allocator.alloc(b.bytes);
    }
    return b.ptr;
  }

  kernel(prefix: keyof typeof PARAMS, suffix = ''): Kernel {
    return this.be.kernels.module.kernel(suffix ? `${prefix}_${suffix}` : prefix, PARAMS[prefix]);
  }

  dispose(): void {
    this.#gemm?.dispose();
    this.#gemm = null;
    for (const b of this.buffers.values()) if (b.ptr) this.be.allocator.free(b.ptr);
    for (const ptr of this.owned) this.be.allocator.free(ptr);
    this.buffers.clear();
    this.owned.length = 0;
  }
}

interface Fp8Prep {
  /** E4M3 [Npad, K]: the weight's own words, or a zero-padded copy */
  readonly w: number;
  readonly Npad: number;
  /** f32 [N] weight scales for outer-vector scaling (made on first use) */
  scaleVector: number | null;
}

const states = new WeakMap<CudaBackend, QuantState>();

function stateOf(be: CudaBackend): QuantState {
  let st = states.get(be);
  if (!st) states.set(be, (st = new QuantState(be)));
  return st;
}

/** Frees what the quantized linears of `be` hold (scratch, cached weight copies, the cuBLASLt handle). */
export function disposeQuant(be: CudaBackend): void {
  states.get(be)?.dispose();
  states.delete(be);
}

/** A checked call: tensors as CUDA tensors and the sizes every path needs. */
interface Call {
  readonly w: QuantizedWeight;
  readonly out: CudaTensor;
  readonly x: CudaTensor;
  readonly bias: CudaTensor | null;
  readonly qweight: CudaTensor;
  readonly scales: CudaTensor;
  readonly zeros: CudaTensor | null;
  readonly inputScale: CudaTensor | null;
  /** fp8: x as the fused norm quantized it (codes [>= M, K/4] 16-byte aligned, scales [>= M]) */
  readonly xq: { readonly codes: CudaTensor; readonly scales: CudaTensor } | null;
  readonly M: number;
  readonly N: number;
  readonly K: number;
  readonly perTensor: boolean;
  readonly outKind: number;
  readonly biasKind: number;
}

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
  if (path === 'dequant') return dequantLinear(st, c);
  if (path === 'cublas' && fp8TensorActivations.enabled && c.perTensor && fp8CublasScalar(st, c)) return;
  const a = c.xq ? { xq: c.xq.codes.ptr, xs: c.xq.scales.ptr } : quantizeActivations(st, c);
  if (path === 'mma') return fp8Mma(st, c, a);
  fp8Cublas(st, c, a);
}

/**
 * x quantized with one scale for the whole tensor (a static input scale, or amax / 448 computed on the
 * device), then cuBLASLt's FP8 GEMM with scalar scales straight into out. False (nothing queued) where
 * cuBLASLt refuses it or the weight needs padding rows: the caller takes the per-token path.
 */
function fp8CublasScalar(st: QuantState, c: Call): boolean {
  const { M, N, K } = c;
  const prep = prepareFp8(st, c);
  const refuse = (why: string): false => {
    if (forcedScaling === 'scalar') throw new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', `linear: no scalar-scaled FP8 GEMM for M=${M} N=${N} K=${K}: ${why}`, { M, N, K });
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
    dequant: true,
  };
  if (forcedPath) {
    if (!can[forcedPath]) throw new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', `linear: path '${forcedPath}' cannot run ${w.kind} [${w.shape.join(', ')}] with ${numTokens} tokens`, { path: forcedPath, kind: w.kind });
    return forcedPath;
  }
  if (can.qgemv && quantFastPolicy.qgemv && numTokens <= quantFastPolicy.maxM) {
    const quantized = hasXq || numTokens > QGEMV_FP8_QUANT_MAX_M;
    if (w.kind !== 'fp8' || !quantized || w.shape[0] <= quantFastPolicy.fp8MaxN || !can.mma) return 'qgemv';
    return 'mma';
  }
  if (w.kind === 'fp8') return can.mma && numTokens <= FP8_MMA_MAX_M ? 'mma' : can.cublas ? 'cublas' : 'dequant';
  return can.gemv && numTokens <= INT_GEMV_MAX_M ? 'gemv' : 'dequant';
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

function blocksFor(st: QuantState, work: number): number {
  return Math.max(1, Math.min(Math.ceil(work / THREADS), st.be.props.numSMs * 16));
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
  const name = w.kind !== 'fp8' ? `${w.kind}_${c.x.dtype}` : q ? 'fp8q' : `fp8_${c.x.dtype}`;
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

/** E4M3 activations of a call: codes [M, K] bytes and per-token scales [M] (device addresses). */
interface QuantizedX {
  readonly xq: number;
  readonly xs: number;
}

/** x -> E4M3 [M, K] and per-token scales [M] in scratch (with `inputScale`, a device f32: that one scale). */
function quantizeActivations(st: QuantState, c: Call, inputScale = c.inputScale?.ptr ?? null): QuantizedX {
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

function fp8Mma(st: QuantState, c: Call, { xq, xs }: QuantizedX): void {
  st.kernel('quant_fp8_mma', c.M <= 8 ? 'n1' : 'n2').launch(Math.ceil(c.N / MMA_ROWS_PER_BLOCK), THREADS, 0, st.be.stream, [
    c.out.ptr, xq, xs, c.qweight.ptr, c.scales.ptr, c.perTensor ? 1 : 0, c.bias?.ptr ?? null, c.M, c.N, c.K, c.outKind, c.biasKind,
  ]);
}

function fp8Cublas(st: QuantState, c: Call, { xq, xs }: QuantizedX): void {
  const { M, N, K } = c;
  const prep = prepareFp8(st, c);
  const outDtype = c.out.dtype as OutDtype;
  if (N === prep.Npad && (forcedScaling === 'outer-vec' || (forcedScaling === null && st.outerVec && M >= FP8_OUTER_VEC_MIN_M))) {
    const ran = st.gemm.fp8({ out: c.out.ptr, outDtype, ldOut: N, xq, w: prep.w, M, N, K, scaling: 'outer-vec', aScale: scaleVector(st, c, prep), bScale: xs }, st.be.stream);
    if (ran) return addBias(st, c);
    st.outerVec = false;
    if (forcedScaling === 'outer-vec') throw new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', `linear: cuBLASLt refuses outer-vector FP8 scaling for M=${M} N=${N} K=${K}: ${st.gemm.lastRefusal ?? 'no reason given'}`, { M, N, K });
  }
  // unscaled products into f32 scratch, then our epilogue, a chunk of tokens at a time
  const outBytes = c.out.dtype === 'f32' ? 4 : 2;
  const chunk = Math.max(1, Math.floor(ACC_BYTES / (prep.Npad * 4)));
  for (let m0 = 0; m0 < M; m0 += chunk) {
    const mc = Math.min(chunk, M - m0);
    const acc = st.buf('acc', mc * prep.Npad * 4);
    const ran = st.gemm.fp8({ out: acc, outDtype: 'f32', ldOut: prep.Npad, xq: xq + m0 * K, w: prep.w, M: mc, N: prep.Npad, K, scaling: 'none', aScale: 0, bScale: 0 }, st.be.stream);
    if (!ran) {
      if (m0 === 0 && forcedPath !== 'cublas') return dequantLinear(st, c);
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

function addBias(st: QuantState, c: Call): void {
  if (!c.bias) return;
  st.kernel('quant_bias_add').launch(blocksFor(st, c.M * c.N), THREADS, 0, st.be.stream, [c.out.ptr, c.bias.ptr, c.M, c.N, c.outKind, c.biasKind]);
}

/** Rows of a dequantized tile of [N, K]: TILE_BYTES of the activation dtype, a multiple of TILE_ROW_ALIGN (or all of N). */
function tileRowsFor(N: number, K: number): number {
  const rows = Math.max(TILE_ROW_ALIGN, Math.floor(TILE_BYTES / (2 * K) / TILE_ROW_ALIGN) * TILE_ROW_ALIGN);
  return Math.min(N, rows);
}

function dequantLinear(st: QuantState, c: Call): void {
  const { M, N, K, w } = c;
  const act = c.x.dtype as 'bf16' | 'f16';
  let x = c.x.ptr;
  if (w.kind === 'fp8') {
    x = st.buf('xfq', M * K * 2);
    st.kernel('quant_fp8_act', act).launch(M, THREADS, 0, st.be.stream, [null, null, x, c.x.ptr, c.inputScale?.ptr ?? null, K, FP8_MIN_ACTIVATION_SCALE]);
  }
  const tileRows = tileRowsFor(N, K);
  const tile = st.buf('tile', tileRows * K * 2);
  const outBytes = c.out.dtype === 'f32' ? 4 : 2;
  const wordsPerRow = K / VALUES_PER_WORD[w.kind];
  for (let n0 = 0; n0 < N; n0 += tileRows) {
    const rows = Math.min(tileRows, N - n0);
    st.kernel('quant_dequant', act).launch(blocksFor(st, rows * wordsPerRow), THREADS, 0, st.be.stream, [
      tile, c.qweight.ptr, c.scales.ptr, c.zeros?.ptr ?? null, KIND_CODE[w.kind], n0, rows, K, w.groupSize, c.perTensor ? 1 : 0,
    ]);
    st.gemm.half({ out: c.out.ptr + n0 * outBytes, outDtype: c.out.dtype as OutDtype, ldOut: N, x, w: tile, dtype: act, M, N: rows, K }, st.be.stream);
  }
  addBias(st, c);
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

/** Fills an i32 tensor with random words AND `mask` on the device (code tensors for benchmarks). */
export function fillCodes(be: CudaBackend, t: Tensor, seed: number, mask: number): void {
  const c = asCuda(t, 'fillCodes', 'tensor');
  if (c.numel === 0) return;
  stateOf(be).kernel('quant_fill_codes').launch(Math.max(1, Math.min(Math.ceil(c.numel / THREADS), be.props.numSMs * 16)), THREADS, 0, be.stream, [c.ptr, c.numel, seed >>> 0, mask >>> 0]);
}
