/**
 * The quantized decode GEMV (kernels/quant_gemv.cu): `linear` with an FP8 / INT8 / INT4 QuantizedWeight for up
 * to 8 tokens, on tensor cores, with the weights streamed through a per-warp cp.async ring by persistent
 * blocks. FP8 activations come quantized (`xq`, from the fused RMSNorm) or are quantized inside the kernel, so a
 * decode linear is one launch. Same results as the CPU reference within f32 accumulation.
 *
 * What it takes (`qgemvCan`, pure, unit-tested): M <= 8; K % 64 (int4: K % 128); int groups of one row or of a
 * power of two of 64-k (int8) / 128-k (int4) steps; fp8 only on sm_89+; x staged in shared memory must fit a block. Policy (`qgemvPolicy`): on by
 * default for M <= QGEMV_MAX_M; PEREGRINE_QGEMV=0 (or PEREGRINE_QUANT_FAST=0, which also turns off the fused
 * norm and the one-pass activation quantizer: the code as it was before) sends linears to the older kernels;
 * PEREGRINE_QGEMV_MAX_M=n (0..8) bounds the tokens. The ring holds 6 steps a warp, 10 for FP8 rows of K >= 8192
 * (`qgemvStages`; PEREGRINE_QGEMV_FP8_STAGES=6|10 forces a depth, for comparisons).
 */
import type { QuantizedWeight } from '../backend.js';
import type { ParamKind } from './module.js';

/** the kernel's weight formats: a QuantizedWeight kind, or 'dense' (bf16 / f16 weights: cuda-gemv.ts, PEREGRINE_GEMV=ring) */
export type QgemvKind = QuantizedWeight['kind'] | 'dense';

/** qgemv_<kind>_<dtype>(out, x, xq, xs, inputScale, qw, scales, zeros, bias, M, N, K, groupShift, wsPerTensor, outKind, biasKind, minScale) */
export const QGEMV_PARAMS: readonly ParamKind[] = ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'f32'];

/** out dtype and bias dtype codes of the kernels (quant.cuh outKind / biasKind; gemv.cu's biasKind too; 0 = no bias) */
export const OUT_KIND = { f32: 0, bf16: 1, f16: 2 } as const;
export const BIAS_KIND = { f32: 1, bf16: 2, f16: 3 } as const;

/** tokens one launch takes (the mma's n8) */
export const QGEMV_MAX_M = 8;
/**
 * fp8 without quantized x: the kernel quantizes x itself up to this many tokens; beyond, one quant_fp8_rows pass
 * first is cheaper (H100, 8B shapes: o_proj / down_proj at 1-2 tokens 9.5-9.8 / 26-29 us in-kernel against
 * 11.9 / 31.5 for the older path; at 8 tokens 15.8 / 44.2, where a separate pass + the GEMV is ~12 / ~28).
 */
export const QGEMV_FP8_QUANT_MAX_M = 2;
/**
 * fp8 with quantized x: the decode GEMV up to this many weight rows, the older tensor-core GEMV (quant_fp8_mma)
 * above, where it measured faster. H200 with PDL (2026-11-28, ops-bench, 1 / 8 tokens): qkv_proj N = 6144 7.84 /
 * 9.72 us against 10.41 / 11.17 (8B FP8 batch 1: 0.08 ms a token faster served, two A/B pairs); gate_up_proj N =
 * 28672 32.09 / 32.70 against 31.10 / 32.44. (The H100 runs without PDL had put qkv_proj on the older GEMV: 12.1
 * / 12.8 against 11.6 / 12.3; N = 4096 8.8-9.5 / 24.7-25.3 against 9.4-9.8 / 26.7-27.4.)
 */
export const QGEMV_FP8_MAX_N = 8192;
/** kernels/quant_gemv.cu: QG_WARPS, QG_STAGES, QG_RING_W / QG_RING_S, QG_MIN_BLOCKS */
export const QGEMV_THREADS = 256;
const WARPS = 8;
/** ring steps a warp (QG_STAGES), of every kind but fp8 rows from FP8_DEEP_RING_MIN_K */
export const QGEMV_STAGES = 6;
const RING_CODE_BYTES = 1024;
/** int formats: a float a lane (its quad's two rows' scales and zeros) */
const RING_SCALE_BYTES = 128;
const MAX_BLOCKS_PER_SM = 3;
/** partial sums [2][WARPS][16][8] f32 + token scales [8] f32 + a 32-byte zero slot */
const RED_BYTES = 2 * WARPS * 16 * 8 * 4 + 8 * 4 + 32;
/** shared memory the driver keeps per resident block */
const RESERVED_SHARED_PER_BLOCK = 1024;
/** k of one step (64 bytes of a row) */
const STEP_K: Record<QgemvKind, number> = { fp8: 64, int8: 64, int4: 128, dense: 32 };

function envFlag(name: string): boolean {
  return process.env[name] !== '0';
}

function envMaxM(): number {
  const n = Number(process.env.PEREGRINE_QGEMV_MAX_M ?? QGEMV_MAX_M);
  return Number.isInteger(n) && n >= 0 && n <= QGEMV_MAX_M ? n : QGEMV_MAX_M;
}

/** Read once from the environment; tests and benchmarks may change it. */
export const quantFastPolicy = {
  /** the decode GEMV for linears of <= maxM tokens */
  qgemv: envFlag('PEREGRINE_QGEMV') && envFlag('PEREGRINE_QUANT_FAST'),
  maxM: envMaxM(),
  /** rmsNormFp8 (the fused norm) and quant_fp8_rows (one-pass activation quantization) */
  fused: envFlag('PEREGRINE_QUANT_FAST'),
  /**
   * fp8 with quantized x: the decode GEMV up to this many weight rows, quant_fp8_mma above
   * (PEREGRINE_QGEMV_FP8_MAX_N; default QGEMV_FP8_MAX_N, measured without PDL: under PEREGRINE_PDL=1 the decode
   * GEMV loads its first weights early and quant_fp8_mma does not, so the A/B is worth repeating there)
   */
  fp8MaxN: envCount('PEREGRINE_QGEMV_FP8_MAX_N', QGEMV_FP8_MAX_N),
  /** fp8's ring for every K: 6 or 10 steps a warp (PEREGRINE_QGEMV_FP8_STAGES=6|10); null: by K (qgemvStages) */
  fp8Stages: envStages('PEREGRINE_QGEMV_FP8_STAGES', [6, 10]),
};

/** A ring depth from the environment, one of `allowed`, or null (the default for the kind). */
function envStages(name: string, allowed: readonly number[]): number | null {
  const v = Number(process.env[name]);
  return allowed.includes(v) ? v : null;
}

/** A non-negative integer from the environment, or `fallback` when unset or not one. */
export function envCount(name: string, fallback: number): number {
  const n = Number(process.env[name] ?? fallback);
  return Number.isInteger(n) && n >= 0 ? n : fallback;
}

/** Bytes between rows of x in the kernel's shared memory (qg_x_stride): fp8 and dense = 64 mod 128, int = 16 mod 128. */
export function qgemvXStride(kind: QgemvKind, K: number): number {
  const mod = (a: number) => ((a % 128) + 128) % 128;
  if (kind === 'fp8') return K + mod(64 - K);
  return kind === 'dense' ? 2 * K + mod(64 - 2 * K) : 2 * K + mod(16 - 2 * K);
}

/**
 * fp8 rows of at least this K take the deeper ring (FP8_DEEP_STAGES steps a warp): H200, 2026-11-28, ops-bench at 1
 * token: down_proj (K = 14336, 28 steps a warp) 21.76 -> 16.62 us with x quantized (63% -> 83% of copy), 21.28 ->
 * 19.00 quantizing x itself; at K = 4096 (8 steps a warp, 5 of them already in flight) o_proj 6.01 -> 6.59 and
 * qkv_proj 7.86 -> 8.51 (slower). ncu had the 6-step ring's warps waiting on memory (long scoreboard 3.9 cycles an
 * instruction issued, DRAM 63%).
 */
export const FP8_DEEP_RING_MIN_K = 8192;
const FP8_DEEP_STAGES = 10;

/**
 * Ring steps a warp of the kernel for this kind and K (fp8: the deeper ring from FP8_DEEP_RING_MIN_K, or as forced;
 * every other kind 6). The kernels exist for fp8 6 / 10 steps, the rest 6 (kernels/quant_gemv.cu). Int formats
 * on an 8-step ring measured no faster (H200, 2026-11-28, 1 token: int4 down_proj 14.59 -> 15.02 us, gate_up_proj
 * 27.03 -> 27.34).
 */
export function qgemvStages(kind: QgemvKind, K: number): number {
  if (kind === 'fp8') return quantFastPolicy.fp8Stages ?? (K >= FP8_DEEP_RING_MIN_K ? FP8_DEEP_STAGES : QGEMV_STAGES);
  return QGEMV_STAGES;
}

/** Dynamic shared memory of one block for M tokens of K. */
export function qgemvSharedBytes(kind: QgemvKind, M: number, K: number): number {
  const ring = WARPS * qgemvStages(kind, K) * (RING_CODE_BYTES + (kind === 'int8' || kind === 'int4' ? RING_SCALE_BYTES : 0));
  return ring + RED_BYTES + M * qgemvXStride(kind, K);
}

export interface QgemvShape {
  readonly kind: QgemvKind;
  readonly M: number;
  readonly K: number;
  readonly groupSize: number;
}

export interface QgemvDevice {
  /** sm_89+ (FP8 tensor cores) */
  readonly fp8Cores: boolean;
  readonly maxSharedBytesPerBlock: number;
}

/**
 * The kernel's groupShift: int groups of 2^shift steps (-1: one group a row, and for fp8); null when the groups
 * are not whole powers of two of steps.
 */
export function qgemvGroupShift(kind: QgemvKind, K: number, groupSize: number): number | null {
  if (kind === 'fp8' || kind === 'dense' || groupSize >= K) return -1;
  const steps = groupSize / STEP_K[kind];
  if (!Number.isInteger(steps) || steps < 1 || (steps & (steps - 1)) !== 0) return null;
  return Math.log2(steps);
}

/**
 * Whether the kernel can run this shape on this device (alignment is the caller's). Tokens whose x does not fit
 * one block's shared memory run in chunks of `qgemvChunkM` (int formats of 8 tokens x 14336 on an H100).
 */
export function qgemvCan(s: QgemvShape, dev: QgemvDevice): boolean {
  if (!Number.isInteger(s.M) || s.M < 1 || s.M > QGEMV_MAX_M) return false;
  if (s.K <= 0 || s.K % STEP_K[s.kind] !== 0) return false;
  if (s.kind === 'fp8' && !dev.fp8Cores) return false;
  if (qgemvGroupShift(s.kind, s.K, s.groupSize) === null) return false;
  return qgemvChunkM(s.kind, s.K, dev.maxSharedBytesPerBlock) >= 1;
}

/** The most tokens (<= 8) one launch takes for K: as many as x in shared memory allows. */
export function qgemvChunkM(kind: QgemvKind, K: number, maxSharedBytesPerBlock: number): number {
  let m = QGEMV_MAX_M;
  while (m > 0 && qgemvSharedBytes(kind, m, K) > maxSharedBytesPerBlock) m--;
  return m;
}

/**
 * Blocks to launch: persistent blocks, at most as many as can be resident at once (the shared memory an SM has
 * is taken as the opt-in maximum of a block + the driver's reserve, which holds for sm_80 / 89 / 90), and no
 * more than give every block the same number of tiles of 16 rows (the last one excepted), so that no block
 * works a tile longer than the others.
 */
export function qgemvGrid(N: number, sharedBytes: number, numSMs: number, maxSharedBytesPerBlock: number): number {
  const perSM = Math.floor((maxSharedBytesPerBlock + RESERVED_SHARED_PER_BLOCK) / (sharedBytes + RESERVED_SHARED_PER_BLOCK));
  const resident = numSMs * Math.max(1, Math.min(MAX_BLOCKS_PER_SM, perSM));
  const tiles = Math.ceil(N / 16);
  return Math.max(1, Math.ceil(tiles / Math.ceil(tiles / resident)));
}
