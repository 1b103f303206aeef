/**
 * The kernels of kernels/*.cu by family, with each family's parameter list (it must match
 * the extern "C" signature there). A kernel's name is `<family>_<suffix>`, the suffix
 * naming the dtype and, for attention, the head size (`bf16_d128`) and heads per block.
 */
import type { DType } from '../backend.js';
import type { CudaModule, Kernel, ParamKind } from './module.js';

const ptr = 'ptr' as const, i64 = 'i64' as const, i32 = 'i32' as const, u32 = 'u32' as const, f32 = 'f32' as const;

/**
 * Both decode attention kernels (attention_decode.cu, attention_decode_tc.cu; PGN_DECODE_PARAMS in
 * kernels/decode_common.cuh): (out, partialO, partialML, qkv, kCache, vCache, cuSeqlensQ, contextLens,
 * blockTables, alibiSlopes, numHeads, numKvHeads, maxBlocksPerSeq, blockSize, scale, window, softcap, numSplits)
 */
const ATTN_DECODE = [ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i32, i32, i32, i32, f32, i32, f32, i32] as const;
/** over an fp8 cache: then (kScale, vScale) */
const ATTN_DECODE_FP8 = [...ATTN_DECODE, f32, f32] as const;
/** Both RoPE kernels (rope.cu): (qkv, positions, cosSin, kCache, vCache, slotMapping, numHeads, numKvHeads, D, rotaryDim, gptj, numPositions, numSlots) */
const ROPE_WRITE_KV = [ptr, ptr, ptr, ptr, ptr, ptr, i32, i32, i32, i32, i32, i32, i32] as const;
/** over an fp8 cache: then (kScale, vScale) */
const ROPE_WRITE_KV_FP8 = [...ROPE_WRITE_KV, f32, f32] as const;

export const KERNEL_PARAMS = {
  // (out, a, b, n, vec)
  add: [ptr, ptr, ptr, i64, i32],
  // (out, x, n, vec)
  relu: [ptr, ptr, i64, i32],
  // (out, x, n, vec, tanhApprox)
  gelu: [ptr, ptr, i64, i32, i32],
  // (out, x, n, vec, factor)
  scale: [ptr, ptr, i64, i32, f32],
  // (out, x, n, vec, cap)
  softcap: [ptr, ptr, i64, i32, f32],
  // (out, x, n, vec, lo, hi)
  clamp: [ptr, ptr, i64, i32, f32, f32],
  // (out, gateUp, numTokens, I, vec)
  silu_mul: [ptr, ptr, i64, i32, i32],
  // (out, gateUp, numTokens, I, vec, tanhApprox)
  gelu_mul: [ptr, ptr, i64, i32, i32, i32],
  // (out, src, index, numRows, H, numSrcRows, vec, indexOffset)
  gather_rows: [ptr, ptr, ptr, i32, i32, i32, i32, i32],
  // (out, n, seed, scale)
  fill_uniform: [ptr, i64, u32, f32],
  // (out f32, bias, numTokens, N)
  bias_add_f32: [ptr, ptr, i64, i32],
  // (out, x, residual, weight, eps, weightOffset, H, vec)
  rms_norm: [ptr, ptr, ptr, ptr, f32, f32, i32, i32],
  // (out, x, residual, weight, bias, eps, H, vec)
  layer_norm: [ptr, ptr, ptr, ptr, ptr, f32, i32, i32],
  // (qkv, qWeight, kWeight, eps, weightOffset, numHeads, numKvHeads, D)
  qk_rms_norm: [ptr, ptr, ptr, f32, f32, i32, i32, i32],
  // (topkIds, topkWeights, logits f32, E, topK, renormalize)
  moe_route: [ptr, ptr, ptr, i32, i32, i32],
  // (act f32, x, gateUp, topkIds, topK, H, I, E)
  moe_gate_up: [ptr, ptr, ptr, ptr, i32, i32, i32, i32],
  // (out, act f32, down, topkIds, topkWeights, topK, H, I, E)
  moe_down: [ptr, ptr, ptr, ptr, ptr, i32, i32, i32, i32],
  rope_write_kv: ROPE_WRITE_KV,
  rope_write_kv_vec: ROPE_WRITE_KV,
  // (out, qkv, kCache, vCache, cuSeqlensQ, contextLens, blockTables, alibiSlopes,
  //  numHeads, numKvHeads, maxBlocksPerSeq, blockSize, scale, window, softcap)
  attn_prefill: [ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i32, i32, i32, i32, f32, i32, f32],
  // (out, qkv, kCache, vCache, cuSeqlensQ, contextLens, blockTables, alibiSlopes,
  //  numSeqs, numHeads, numKvHeads, D, maxBlocksPerSeq, blockSize, scale, window, softcap)
  attn_generic: [ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i32, i32, i32, i32, i32, i32, f32, i32, f32],
  attn_decode: ATTN_DECODE,
  attn_decode_tc: ATTN_DECODE,
  // (out, partialO, partialML, cuSeqlensQ, numHeads, D, numSplits)
  attn_decode_combine: [ptr, ptr, ptr, ptr, i32, i32, i32],
  // the fp8 KV cache's kernels: the same parameters, then (kScale, vScale)
  rope_write_kv_fp8: ROPE_WRITE_KV_FP8,
  rope_write_kv_vec_fp8: ROPE_WRITE_KV_FP8,
  attn_prefill_fp8: [ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i32, i32, i32, i32, f32, i32, f32, f32, f32],
  attn_generic_fp8: [ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i32, i32, i32, i32, i32, i32, f32, i32, f32, f32, f32],
  attn_decode_fp8: ATTN_DECODE_FP8,
  attn_decode_tc_fp8: ATTN_DECODE_FP8,
} as const satisfies Record<string, readonly ParamKind[]>;

export type KernelFamily = keyof typeof KERNEL_PARAMS;

export class CudaKernels {
  readonly module: CudaModule;
  readonly origin: string;

  constructor(module: CudaModule, origin: string) {
    this.module = module;
    this.origin = origin;
  }

  get(family: KernelFamily, suffix: string): Kernel {
    return this.module.kernel(`${family}_${suffix}`, KERNEL_PARAMS[family]);
  }

  /** The float-dtype kernel of `family` (`add_bf16`, ...). */
  typed(family: KernelFamily, dtype: DType): Kernel {
    return this.get(family, dtype);
  }
}
