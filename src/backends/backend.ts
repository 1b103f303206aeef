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
}

/** Paged KV cache of one layer: `[numBlocks * blockSize, numKvHeads * headDim]`; slot = block * blockSize + offset. */
export interface LayerKvCache {
  readonly k: Tensor;
  readonly v: Tensor;
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
   * RMSNorm: out = x / rms(x) * (weight + weightOffset).
   * With `residual`: residual += x first (in place), then out = norm(residual).
   */
  rmsNorm(out: Tensor, x: Tensor, weight: Tensor, eps: number, numTokens: number, residual?: Tensor | null, weightOffset?: number): void;
  /** LayerNorm with optional bias and the same fused residual add as rmsNorm. */
  layerNorm(out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | null, eps: number, numTokens: number, residual?: Tensor | null): void;
  /** out [T, N] = x [T, K] @ w[N, K]^T (+ bias [N]). out may be f32 (logits) or activationDtype. */
  linear(out: Tensor, x: Tensor, w: Tensor, bias: Tensor | null, numTokens: number): void;
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
  geluMul(out: Tensor, gateUp: Tensor, numTokens: number, approx: GeluApprox): void;
  gelu(out: Tensor, x: Tensor, numTokens: number, approx: GeluApprox): void;
  relu(out: Tensor, x: Tensor, numTokens: number): void;
  /** out = a + b (elementwise over the first numTokens rows). out may alias a. */
  add(out: Tensor, a: Tensor, b: Tensor, numTokens: number): void;
  /** out [R, H] = x[indices[r]]; indices i32 [R]. */
  gatherRows(out: Tensor, x: Tensor, indices: Tensor, numRows: number): void;
  /** out = x (first numTokens rows). */
  copy(out: Tensor, x: Tensor, numTokens: number): void;
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function bytesPerElement(dtype: DType): number {
  return dtype === 'f16' || dtype === 'bf16' ? 2 : 4;
}
