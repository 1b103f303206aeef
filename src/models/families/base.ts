/**
 * The switches every family starts from: a pre-norm, sequential RoPE decoder with RMSNorm,
 * a gated SiLU MLP, no biases and none of the extras (ALiBi, soft-capping, MoE, ...).
 * A family spreads this and overrides what differs, so a new ModelSpec field gets its
 * default here once.
 */
import type { ModelSpec, WeightMap, WeightTransform } from '../spec.js';
import { groupedQkvOrder } from '../weight-transform.js';
import type { CommonFields } from '../config.js';
import { configInvalid } from './fields.js';

export const DEFAULT_NORM_EPS = 1e-5;

/** GPT-2's config key names (GPT-2 and GPT-J configs): our key -> theirs, as HF's attribute_map */
export const GPT2_STYLE_KEYS = {
  hidden_size: 'n_embd', num_attention_heads: 'n_head', num_hidden_layers: 'n_layer',
  max_position_embeddings: 'n_positions', intermediate_size: 'n_inner',
} as const;

export function baseSpec(c: CommonFields, intermediateSize: number): ModelSpec {
  return {
    architecture: c.architecture,
    family: c.family,
    vocabSize: c.vocabSize,
    hiddenSize: c.hiddenSize,
    numLayers: c.numLayers,
    numHeads: c.numHeads,
    numKvHeads: c.numKvHeads,
    headDim: c.headDim,
    intermediateSize,
    maxPositionEmbeddings: c.maxPositionEmbeddings,
    norm: { type: 'rms', eps: DEFAULT_NORM_EPS, weightOffset: 0 },
    activation: 'silu',
    gatedMlp: true,
    bias: { qkv: false, o: false, mlp: false, lmHead: false },
    positional: 'rope',
    rope: c.rope,
    tieWordEmbeddings: c.tieWordEmbeddings,
    parallelResidual: false,
    slidingWindow: null,
    attentionScale: 1 / Math.sqrt(c.headDim),
    embeddingScale: 1,
    finalLogitSoftcap: null,
    attnLogitSoftcap: null,
    normPlacement: 'pre',
    sandwichNorms: false,
    embeddingNorm: false,
    wordEmbedDim: c.hiddenSize,
    alibiSlopes: null,
    clipQkv: null,
    qkNorm: false,
    slidingLayers: null,
    moe: null,
    bosTokenId: c.bosTokenId,
    eosTokenIds: c.eosTokenIds,
    padTokenId: c.padTokenId,
    torchDtype: c.torchDtype,
  };
}

/** `intermediate_size` (or the family's key for it), required. */
export function requireIntermediate(c: CommonFields, key = 'intermediate_size'): number {
  if (c.intermediateSize === null) throw configInvalid(key, `"${key}" must be a positive integer (missing)`);
  return c.intermediateSize;
}

/**
 * The Megatron-style layer of BLOOM and GPT-NeoX: LayerNorms with bias, a fused
 * query_key_value stored per head as [numHeads, 3, headDim] rows (reordered to q | k | v
 * on load), dense, dense_h_to_4h and dense_4h_to_h, all with biases.
 * @param l the layer's prefix with `{i}`, e.g. 'gpt_neox.layers.{i}'
 * @param attn the attention submodule's name ('attention' or 'self_attention')
 */
export function megatronLayerMap(l: string, attn: string, spec: ModelSpec): WeightMap['layer'] {
  const perHead: readonly WeightTransform[] = [{ kind: 'permuteBlocks', blockRows: spec.headDim, order: groupedQkvOrder(spec.numHeads, 1) }];
  return {
    'input_layernorm.weight': `${l}.input_layernorm.weight`,
    'input_layernorm.bias': `${l}.input_layernorm.bias`,
    'self_attn.qkv_proj.weight': { names: `${l}.${attn}.query_key_value.weight`, transforms: perHead },
    'self_attn.qkv_proj.bias': { names: `${l}.${attn}.query_key_value.bias`, transforms: perHead },
    'self_attn.o_proj.weight': `${l}.${attn}.dense.weight`,
    'self_attn.o_proj.bias': `${l}.${attn}.dense.bias`,
    'post_attention_layernorm.weight': `${l}.post_attention_layernorm.weight`,
    'post_attention_layernorm.bias': `${l}.post_attention_layernorm.bias`,
    'mlp.up_proj.weight': `${l}.mlp.dense_h_to_4h.weight`,
    'mlp.up_proj.bias': `${l}.mlp.dense_h_to_4h.bias`,
    'mlp.down_proj.weight': `${l}.mlp.dense_4h_to_h.weight`,
    'mlp.down_proj.bias': `${l}.mlp.dense_4h_to_h.bias`,
  };
}
