/**
 * The tiled INT8 / INT4 GEMM for prefill-sized linears (kernels/quant_igemm.cu): a 64-token x 128-row tile a block,
 * the weights dequantized into shared memory a 64-k chunk at a time (as the dequantizing path rounds them) and
 * multiplied on tensor cores, so the codes are read once a tile of tokens and never written out as bf16.
 * Prepared without a GPU (2026-11-28): opt-in (PEREGRINE_INT_GEMM=1) until its GPU test (cuda-quant.test.ts)
 * and a measurement against the dequantizing path (`ops-bench --only "qgemm int4/igemm"`) have run.
 */
import type { QuantizedWeight } from '../backend.js';
import { envCount } from './cuda-quant-gemv.js';
import type { Call, QuantState } from './cuda-quant-state.js';

export const IGEMM_TILE_M = 64;
export const IGEMM_TILE_N = 128;
export const IGEMM_THREADS = 256;
const CHUNK_K = 64;
const ROW_STRIDE = 72;

/** Read once from the environment; tests and benchmarks may change it. */
export const igemmPolicy = {
  /** int8 / int4 linears of 9 .. maxM tokens on the tiled GEMM instead of dequantized tiles + cuBLASLt */
  enabled: process.env.PEREGRINE_INT_GEMM === '1',
  /**
   * the most tokens it takes (PEREGRINE_INT_GEMM_MAX_M, default 512): long prompts are compute-bound, where
   * cuBLASLt on the dequantized tiles is the faster tensor-core GEMM (mma.sync here, not wgmma)
   */
  maxM: envCount('PEREGRINE_INT_GEMM_MAX_M', 512),
};

/** Whether the kernel takes this weight: int8 / int4, K % 64 == 0 and every 64-k chunk inside one group. */
export function igemmCan(kind: QuantizedWeight['kind'], K: number, groupSize: number): boolean {
  return (kind === 'int8' || kind === 'int4') && K > 0 && K % CHUNK_K === 0 && groupSize % CHUNK_K === 0;
}

/** Dynamic shared memory of a block (ig_shared_bytes): x stages, code stages, scale / zero stages, the w tile. */
export function igemmSharedBytes(kind: 'int8' | 'int4'): number {
  const codeBytes = kind === 'int4' ? CHUNK_K / 2 : CHUNK_K;
  return 2 * IGEMM_TILE_M * ROW_STRIDE * 2 + 2 * IGEMM_TILE_N * codeBytes + 2 * 2 * IGEMM_TILE_N * 4 + IGEMM_TILE_N * ROW_STRIDE * 2;
}

/** out [M, N] = x @ dequant(w)^T (+ bias) on the tiled GEMM (the caller checked igemmCan and 16-byte alignment). */
export function igemm(st: QuantState, c: Call): void {
  const kind = c.w.kind as 'int8' | 'int4';
  const grid: [number, number, number] = [Math.ceil(c.N / IGEMM_TILE_N), Math.ceil(c.M / IGEMM_TILE_M), 1];
  st.kernel('quant_igemm', `${kind}_${c.x.dtype}`).launch(grid, IGEMM_THREADS, igemmSharedBytes(kind), st.be.stream, [
    c.out.ptr, c.x.ptr, c.qweight.ptr, c.scales.ptr, c.zeros?.ptr ?? null, c.bias?.ptr ?? null, c.M, c.N, c.K, c.w.groupSize, c.outKind, c.biasKind,
  ]);
}
