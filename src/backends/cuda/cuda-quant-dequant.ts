/** The fallback of every quantized linear: the weight dequantized tile by tile into the activation dtype, each tile through cuBLASLt's half GEMM. */
import { FP8_MIN_ACTIVATION_SCALE } from '../../weights/quant/fp8.js';
import type { OutDtype } from './cuda-quant-gemm.js';
import { blocksFor, KIND_CODE, THREADS, TILE_BYTES, TILE_ROW_ALIGN, VALUES_PER_WORD, type Call, type QuantState } from './cuda-quant-state.js';

export function addBias(st: QuantState, c: Call): void {
  if (!c.bias) return;
  st.kernel('quant_bias_add').launch(blocksFor(st, c.M * c.N), THREADS, 0, st.be.stream, [c.out.ptr, c.bias.ptr, c.M, c.N, c.outKind, c.biasKind]);
}

/** Rows of a dequantized tile of [N, K]: TILE_BYTES of the activation dtype, a multiple of TILE_ROW_ALIGN (or all of N). */
function tileRowsFor(N: number, K: number): number {
  const rows = Math.max(TILE_ROW_ALIGN, Math.floor(TILE_BYTES / (2 * K) / TILE_ROW_ALIGN) * TILE_ROW_ALIGN);
  return Math.min(N, rows);
}

/**
 * Whether quant_dequant16 (a thread per 16 bytes of codes) takes this weight: rows of whole 16-byte units, each
 * unit inside one group, 16-byte aligned codes; else quant_dequant (a thread per 32-bit word).
 */
export function dequant16Fits(w: { readonly kind: 'fp8' | 'int8' | 'int4'; readonly groupSize: number }, K: number, codesPtr: number): boolean {
  const valuesPerUnit = 4 * VALUES_PER_WORD[w.kind];
  return K % valuesPerUnit === 0 && (w.kind === 'fp8' || w.groupSize % valuesPerUnit === 0) && codesPtr % 16 === 0;
}

export function dequantLinear(st: QuantState, c: Call): void {
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
  const wide = dequant16Fits(w, K, c.qweight.ptr);
  const unitsPerRow = wide ? wordsPerRow / 4 : wordsPerRow;
  for (let n0 = 0; n0 < N; n0 += tileRows) {
    const rows = Math.min(tileRows, N - n0);
    st.kernel(wide ? 'quant_dequant16' : 'quant_dequant', act).launch(blocksFor(st, rows * unitsPerRow), THREADS, 0, st.be.stream, [
      tile, c.qweight.ptr, c.scales.ptr, c.zeros?.ptr ?? null, KIND_CODE[w.kind], n0, rows, K, w.groupSize, c.perTensor ? 1 : 0,
    ]);
    st.gemm.half({ out: c.out.ptr + n0 * outBytes, outDtype: c.out.dtype as OutDtype, ldOut: N, x, w: tile, dtype: act, M, N: rows, K }, st.be.stream);
  }
  addBias(st, c);
}

