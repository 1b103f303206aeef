/**
 * The Backend interface: tensors, memory, and every op the models use.
 *
 * Conventions
 * - Tensors are row-major and contiguous. `shape` is the logical shape; ops read
 *   the leading `numTokens` rows they are told about.
 * - Ops take preallocated outputs first and never allocate.
 * - Linear weights are stored `[out, in]` row-major (PyTorch / HF layout, the "TN" GEMM).
 * - Activations use `backend.activationDtype` (f32 on the CPU, bf16/f16 on CUDA);
 *   logits are always f32.
 * - Ops are enqueued in order; `download*` and `synchronize` wait for them.
 */
import type { RopeStyle } from '../models/spec.js';

export type DType = 'f32' | 'f16' | 'bf16' | 'i32';

/** dtypes as stored in safetensors files (bytes handed to `fromBytes`). */
export type StorageDType = 'F32' | 'F16' | 'BF16' | 'I32' | 'I64' | 'F64' | 'I8' | 'U8' | 'F8_E4M3' | 'F8_E5M2';

export interface Tensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
}

/** Per-step attention metadata, as device tensors plus host-side scalars. */
export interface AttentionMetadata {
  readonly numSeqs: number;
  readonly numTokens: number;
  /** i32 [numSeqs + 1]: query rows of seq s are cuSeqlensQ[s] .. cuSeqlensQ[s+1]. */
  readonly cuSeqlensQ: Tensor;
  /**
   * i32 [numSeqs]: tokens of seq s in the KV cache once this step's K/V are written
   * (earlier context + this step's queries). Query i of seq s sits at absolute
   * position contextLens[s] - qLen + i and attends causally to kv 0..that position.
   */
  readonly contextLens: Tensor;
  /** i32 [numSeqs, maxBlocksPerSeq], padded with -1. */
  readonly blockTables: Tensor;
  readonly maxBlocksPerSeq: number;
  readonly maxSeqlenQ: number;
  readonly maxSeqlenK: number;
  /** every sequence has exactly one query token (pure decode step). */
  readonly isDecode: boolean;
  /**
   * How many sequences at the start of the batch have one query token each (a mixed step's decodes: the
   * scheduler puts running sequences first), so a backend may run them on its decode kernel; absent: 0.
   */
  readonly numDecodeSeqs?: number;
}

/** The leading sequences of a batch with exactly one query row each (AttentionMetadata.numDecodeSeqs). */
export function leadingDecodeSeqs(cuSeqlensQ: ArrayLike<number>, numSeqs: number): number {
  let n = 0;
  while (n < numSeqs && cuSeqlensQ[n + 1]! - cuSeqlensQ[n]! === 1) n++;
  return n;
}

/** Storage of the paged KV cache: 'auto' = the activation dtype; 'fp8' = OCP E4M3 (e4m3fn), one byte an element. */
export type KvCacheDType = 'auto' | 'fp8';

/** Paged KV cache of one layer: `[numBlocks * blockSize, numKvHeads * headDim]`; slot = block * blockSize + offset. */
export interface LayerKvCache {
  readonly k: Tensor;
  readonly v: Tensor;
  /**
   * 'fp8' (issue 6): k and v hold E4M3 codes, 4 to an i32 word (element e of a row in byte e % 4 of
   * word e / 4, little-endian), so each is i32 [numSlots, numKvHeads * headDim / 4]. Written as
   * q = sat(x / scale) (round to nearest even, saturating at +-448), read as x = q * scale.
   * Absent or 'auto': k and v are of the activation dtype.
   */
  readonly dtype?: KvCacheDType;
  /** fp8: the layer's per-tensor f32 scales of K and V (default 1) */
  readonly kScale?: number;
  readonly vScale?: number;
}

export interface AttentionParams {
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly blockSize: number;
  /** softmax scale, usually 1/sqrt(headDim) */
  readonly scale: number;
  /** attend only to the last `slidingWindow` positions (including self); null = unlimited */
  readonly slidingWindow?: number | null;
  /** f32 [numHeads] ALiBi slopes; null = none */
  readonly alibiSlopes?: Tensor | null;
  /** tanh soft-capping of attention scores (Gemma 2); null = none */
  readonly logitSoftcap?: number | null;
}

export interface RopeParams {
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  /** number of leading dims of each head that rotate (partial rotary); = headDim usually */
  readonly rotaryDim: number;
  readonly style: RopeStyle;
}

export type GeluApprox = 'none' | 'tanh';

export interface Backend {
  readonly device: 'cpu' | 'cuda';
  readonly activationDtype: DType;

  // ---- memory ----------------------------------------------------------------
  /** Uninitialised tensor. */
  empty(shape: readonly number[], dtype: DType): Tensor;
  free(t: Tensor): void;
  /** A tensor sharing `t`'s storage: the first `numel(shape)` elements, reinterpreted with `shape`. */
  view(t: Tensor, shape: readonly number[]): Tensor;
  /** Upload raw little-endian bytes of a safetensors dtype, converting to `dtype`. */
  fromBytes(shape: readonly number[], src: StorageDType, bytes: Uint8Array, dtype: DType): Tensor;
  fromF32(shape: readonly number[], data: Float32Array, dtype?: DType): Tensor;
  fromI32(shape: readonly number[], data: Int32Array): Tensor;
  /** Overwrite the first `data.length` elements of an existing tensor (inputs of a step). */
  writeF32(dst: Tensor, data: Float32Array): void;
  writeI32(dst: Tensor, data: Int32Array): void;
  /**
   * Writes `rows` rows of `width` elements of `data` into the first `rows` rows of `dst`, whose rows are
   * `dstStride` elements apart; the rest of each row keeps what it held (narrow block tables of a step).
   */
  writeI32Rows(dst: Tensor, data: Int32Array, rows: number, width: number, dstStride: number): void;
  /** Copy to the host as f32 (converting from bf16/f16). Waits for queued work. */
  downloadF32(t: Tensor): Promise<Float32Array>;
  downloadI32(t: Tensor): Promise<Int32Array>;
  synchronize(): Promise<void>;
  /** Release everything the backend holds. */
  dispose(): void;
  /** Device memory, where the backend has a fixed pool (CUDA); absent on the CPU. */
  memoryInfo?(): { freeBytes: number; totalBytes: number };

  // ---- ops (outputs first) ------------------------------------------------------
  /** out[t] = table[ids[t]]; out [T, H], table [V, H], ids i32 [T]. */
  embedding(out: Tensor, table: Tensor, ids: Tensor, numTokens: number): void;
  /**
   * The lookup of a vocab-parallel embedding: table [V', H] holds vocab rows vocabStart ..
   * vocabStart + V'; out[t] = table[ids[t] - vocabStart] where ids[t] falls in them, else zeros
   * (another rank's row). out [T, H], ids i32 [T].
   */
  embeddingShard(out: Tensor, table: Tensor, ids: Tensor, numTokens: number, vocabStart: number): void;
  /**
   * RMSNorm: out = x / rms(x) * (weight + weightOffset).
   * With `residual`: residual += x first (in place), then out = norm(residual).
   */
  rmsNorm(out: Tensor, x: Tensor, weight: Tensor, eps: number, numTokens: number, residual?: Tensor | null, weightOffset?: number): void;
  /** LayerNorm with optional bias and the same fused residual add as rmsNorm. */
  layerNorm(out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | null, eps: number, numTokens: number, residual?: Tensor | null): void;
  /**
   * out [T, N] = x [T, K] @ w[N, K]^T (+ bias [N]). out may be f32 (logits) or activationDtype.
   * `w` may be a QuantizedWeight (issue 6); a backend without kernels for its kind throws
   * PGN_ERR_UNSUPPORTED_FEATURE.
   * `xq` (fp8 `w` only): x already quantized for w by `rmsNormFp8` (which returned true); a backend
   * may read it instead of quantizing x itself, so it must hold exactly that. Others ignore it.
   */
  linear(out: Tensor, x: Tensor, w: Tensor | QuantizedWeight, bias: Tensor | null, numTokens: number, xq?: Fp8Activations | null): void;
  /**
   * Optional (issue 6): rmsNorm (same arguments, same `out` and residual) that also writes `xq`, out
   * quantized to E4M3 for the FP8 linear reading it next: with `inputScale` (that linear's static
   * f32 [1] scale) or per token (null). Returns false, having done nothing, where the backend has no
   * kernel for these arguments: then call rmsNorm and let linear quantize.
   * `onlyReader`: the FP8 linear that is out's only reader (called next with `xq`); the backend may then leave
   * `out` unwritten where that linear reads the codes alone. Omit it where anything else reads `out`.
   */
  rmsNormFp8?(out: Tensor, x: Tensor, weight: Tensor, eps: number, numTokens: number, residual: Tensor | null, weightOffset: number, xq: Fp8Activations, inputScale: Tensor | null, onlyReader?: QuantizedWeight): boolean;
  /**
   * siluMul that also writes its output quantized for the FP8 down_proj reading it (as rmsNormFp8 does for
   * qkv / gate_up): out exactly as siluMul, xq exactly as that linear would quantize out (its `inputScale`, or
   * per token). Returns false, having done nothing, where the backend does not fuse it (the caller runs siluMul).
   * `onlyReader`: as for rmsNormFp8.
   */
  siluMulFp8?(out: Tensor, gateUp: Tensor, numTokens: number, xq: Fp8Activations, inputScale: Tensor | null, onlyReader?: QuantizedWeight): boolean;
  /**
   * qkv [T, (numHeads + 2 * numKvHeads) * headDim] holds q | k | v per token.
   * Rotates q in place (when `cosSin` is given) and writes rotated k and v into the
   * paged cache rows `slotMapping[t]` (slots < 0 are skipped, e.g. padding).
   * cosSin: f32 [maxPositions, rotaryDim]: cos in the first rotaryDim/2 columns, sin in the rest.
   */
  ropeWriteKv(qkv: Tensor, positions: Tensor, cosSin: Tensor | null, cache: LayerKvCache, slotMapping: Tensor, numTokens: number, p: RopeParams): void;
  /**
   * Paged attention for prefill, chunked prefill and decode alike.
   * out [T, numHeads * headDim]; q is read from qkv (the q block of each row).
   */
  attention(out: Tensor, qkv: Tensor, cache: LayerKvCache, meta: AttentionMetadata, p: AttentionParams): void;
  /** gateUp [T, 2I] = gate | up; out [T, I] = act(gate) * up. */
  siluMul(out: Tensor, gateUp: Tensor, numTokens: number): void;
  /**
   * A linear with its neighbours fused in, where the backend does that for this shape (CUDA: the ring GEMV
   * under PEREGRINE_GEMV=ring, decode-sized T, bf16 / f16 weights): `fusion.input` transforms x first
   * (siluMul: x is gateUp [T, 2K]; rmsNorm: x normalized without a residual add, as rmsNorm(out, x, weight,
   * eps, T, null, weightOffset) would write it), `fusion.accumulate` adds the result, rounded to out's
   * dtype, to out (a residual add). Returns false, having done nothing, where it does not fuse: the caller
   * runs the separate ops. Absent on backends that never fuse.
   */
  fusedLinear?(out: Tensor, x: Tensor, w: Tensor | QuantizedWeight, bias: Tensor | null, numTokens: number, fusion: LinearFusion): boolean;
  geluMul(out: Tensor, gateUp: Tensor, numTokens: number, approx: GeluApprox): void;
  gelu(out: Tensor, x: Tensor, numTokens: number, approx: GeluApprox): void;
  relu(out: Tensor, x: Tensor, numTokens: number): void;
  /** out = a + b (elementwise over the first numTokens rows). out may alias a. */
  add(out: Tensor, a: Tensor, b: Tensor, numTokens: number): void;
  /** out [R, H] = x[indices[r]]; indices i32 [R]. */
  gatherRows(out: Tensor, x: Tensor, indices: Tensor, numRows: number): void;
  /** out = x (first numTokens rows). */
  copy(out: Tensor, x: Tensor, numTokens: number): void;
  /**
   * tokenIds[t] = src[srcIndex[t]] where srcIndex[t] >= 0; other entries keep their value
   * (t < numTokens; all i32). Async scheduling: a step's input tokens that are still being
   * sampled by the previous step are read here, on the device, from that step's sampled ids.
   * An index past the end of src is an error (the CPU throws; CUDA leaves the entry as is).
   */
  gatherTokenIds(tokenIds: Tensor, src: Tensor, srcIndex: Tensor, numTokens: number): void;

  // ---- ops of the model zoo (issue 5) ---------------------------------------------
  /** out = x * factor (elementwise over the first numTokens rows; Gemma's embedding scale). out may alias x. */
  scale(out: Tensor, x: Tensor, factor: number, numTokens: number): void;
  /** out = cap * tanh(x / cap) (Gemma 2 final logits; f32 or activationDtype). out may alias x. */
  softcap(out: Tensor, x: Tensor, cap: number, numTokens: number): void;
  /** out = min(max(x, min), max) (MPT clip_qkv). out may alias x. */
  clamp(out: Tensor, x: Tensor, min: number, max: number, numTokens: number): void;
  /**
   * In place on the q and k blocks of qkv [T, (numHeads + 2 * numKvHeads) * headDim]: RMSNorm over
   * each head's headDim values, times (weight + weightOffset); qWeight and kWeight are [headDim]
   * (Qwen3 q_norm / k_norm). v is untouched.
   */
  qkRmsNorm(qkv: Tensor, qWeight: Tensor, kWeight: Tensor, eps: number, numTokens: number, p: QkNormParams): void;
  /**
   * MoE routing: per token, softmax over routerLogits [T, numExperts] (f32), the topK largest
   * (ties: lower expert id first), optionally rescaled to sum to 1. Writes topkIds i32 [T, topK]
   * and topkWeights f32 [T, topK], best first.
   */
  moeRoute(topkIds: Tensor, topkWeights: Tensor, routerLogits: Tensor, numTokens: number, topK: number, renormalize: boolean): void;
  /**
   * SiLU-gated experts: out[t] = sum_k topkWeights[t,k] * down_e(silu(gate_e x[t]) * up_e x[t]),
   * e = topkIds[t,k]. gateUp [E, 2I, H] (gate rows then up rows per expert), down [E, H, I],
   * x and out [T, H]. out must not alias x.
   */
  moeExperts(out: Tensor, x: Tensor, gateUp: Tensor, down: Tensor, topkIds: Tensor, topkWeights: Tensor, numTokens: number): void;
}

export interface QkNormParams {
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  /** added to the weights (1 for Gemma-style (1 + w) norms); default 0 */
  readonly weightOffset?: number;
}

/**
 * A linear weight w [N, K] stored quantized (issue 6). Every tensor holds an existing dtype:
 * the packed codes travel as i32 words, so no backend needs a storage dtype to hold one.
 *
 * Dequantized: w[n, k] = (q[n, k] - zero) * scale, scale and zero those of row n, group
 * floor(k / groupSize); numGroups = ceil(K / groupSize).
 * - fp8:  qweight i32 [N, K/4]: the [N, K] E4M3 bytes (OCP e4m3fn), element k in byte k % 4 of
 *         word k / 4 (little-endian). scales f32 [1] (per tensor) or [N, 1] (per channel);
 *         zeros null; groupSize K. Activations are quantized to E4M3 too: statically with
 *         inputScale f32 [1], or dynamically per token (inputScale null; scale = rowAmax / 448).
 * - int8: qweight i32 [N, K/4]: two's-complement bytes, same byte order as fp8. Symmetric
 *         (zeros null); scales f32 [N, numGroups] (groupSize K = per channel). Weight-only.
 * - int4: qweight i32 [N, K/8]: unsigned nibbles, q[n, k] in bits 4*(k % 8) .. +3 of word
 *         [n, k / 8] (GPTQ's order along K, and compressed-tensors' pack-quantized layout).
 *         scales f32 [N, numGroups]; zeros f32 [N, numGroups] holding integers 0..15
 *         (asymmetric) or null (symmetric: zero = 8). Weight-only.
 * Made by `src/weights/quant/load.ts` (loadLinearWeight); the CPU backend dequantizes it.
 */
export interface QuantizedWeight {
  readonly kind: 'fp8' | 'int8' | 'int4';
  /** [out N, in K] of the dequantized weight */
  readonly shape: readonly [number, number];
  readonly qweight: Tensor;
  readonly scales: Tensor;
  readonly zeros: Tensor | null;
  /** K for per-channel (and per-tensor) scales */
  readonly groupSize: number;
  /** fp8 static activation scale f32 [1]; null = dynamic per token (and for int8 / int4) */
  readonly inputScale: Tensor | null;
}

/** What Backend.fusedLinear folds into a linear (see there). */
export interface LinearFusion {
  readonly input?: { readonly kind: 'siluMul' } | { readonly kind: 'rmsNorm'; readonly weight: Tensor; readonly eps: number; readonly weightOffset: number };
  readonly accumulate?: boolean;
}

/**
 * Activations quantized to E4M3 for an FP8 linear (issue 6), as that linear would quantize them:
 * codes i32 [T, K/4] (bytes in the fp8 QuantizedWeight layout) and scales f32 [T] (each row's scale:
 * the static input scale, or max(rowAmax / 448, FP8_MIN_ACTIVATION_SCALE)). Rows past numTokens unused.
 */
export interface Fp8Activations {
  readonly codes: Tensor;
  readonly scales: Tensor;
}

export function isQuantizedWeight(w: Tensor | QuantizedWeight | null | undefined): w is QuantizedWeight {
  return typeof w === 'object' && w !== null && 'qweight' in w && 'kind' in w;
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function bytesPerElement(dtype: DType): number {
  return dtype === 'f16' || dtype === 'bf16' ? 2 : 4;
}
