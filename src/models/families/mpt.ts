/**
 * MPT (`MptForCausalLM`), after transformers' `modeling_mpt.py`: ALiBi added to the scaled scores,
 * LayerNorm without bias, no linear biases, fused Wqkv (already q | k | v), optional clamp of
 * q|k|v (`clip_qkv`), ungated exact-GELU MLP, tied embeddings. Settings HF ignores but the
 * original model honours (learned positions without ALiBi, qk LayerNorm) are refused.
 */
import type { WeightMap } from '../spec.js';
import type { ModelFamily } from '../registry.js';
import { alibiSlopes } from '../rope.js';
import { baseSpec } from './base.js';
import { configInvalid, get, isObject, optionalBool, optionalNumber, optionalPositiveInt, unsupported } from './fields.js';

const MPT_LAYER_NORM_EPS = 1e-5;
const MPT_ALIBI_BIAS_MAX = 8;
const MPT_EXPANSION_RATIO = 4;

export const mpt: ModelFamily = {
  name: 'mpt',
  architectures: ['MptForCausalLM'],
  attributeMap: { hidden_size: 'd_model', num_attention_heads: 'n_heads', num_hidden_layers: 'n_layers', max_position_embeddings: 'max_seq_len' },
  defaults: { tieWordEmbeddings: true, maxPositionEmbeddings: 2048 },
  spec(raw, c) {
    const attn = get(raw, 'attn_config') ?? {};
    if (!isObject(attn)) throw configInvalid('attn_config', `"attn_config" must be an object (got ${JSON.stringify(attn)})`);
    if ((optionalBool(attn, 'alibi', 'attn_config.alibi') ?? false) === false) {
      throw unsupported('attn_config.alibi', 'MPT without ALiBi ("attn_config.alibi": false) is not supported');
    }
    if (optionalBool(attn, 'qk_ln', 'attn_config.qk_ln')) throw unsupported('attn_config.qk_ln', 'MPT with "attn_config.qk_ln": true is not supported');
    const clip = optionalNumber(attn, 'clip_qkv', 'attn_config.clip_qkv');
    const scale = optionalNumber(attn, 'softmax_scale', 'attn_config.softmax_scale');
    // HF always uses alibi_bias_max 8; the original MPT code reads it from attn_config
    const maxBias = optionalNumber(attn, 'alibi_bias_max', 'attn_config.alibi_bias_max') ?? MPT_ALIBI_BIAS_MAX;
    const ratio = optionalPositiveInt(raw, 'expansion_ratio') ?? MPT_EXPANSION_RATIO;
    return {
      ...baseSpec(c, ratio * c.hiddenSize),
      norm: { type: 'layer', eps: optionalNumber(raw, 'layer_norm_epsilon') ?? MPT_LAYER_NORM_EPS, weightOffset: 0 },
      activation: 'gelu',
      gatedMlp: false,
      positional: 'alibi',
      rope: null,
      alibiSlopes: [...alibiSlopes(c.numHeads, maxBias)],
      clipQkv: clip ? clip : null, // HF: `if self.clip_qkv:` (0 disables)
      attentionScale: scale ?? 1 / Math.sqrt(c.headDim),
    };
  },
  weightMap(spec): WeightMap {
    const l = 'transformer.blocks.{i}';
    return {
      basePrefix: 'transformer',
      global: {
        'embed_tokens.weight': 'transformer.wte.weight',
        'norm.weight': 'transformer.norm_f.weight',
        'norm.bias': 'transformer.norm_f.bias',
        ...(spec.tieWordEmbeddings ? {} : { 'lm_head.weight': 'lm_head.weight' }),
      },
      layer: {
        'input_layernorm.weight': `${l}.norm_1.weight`,
        'input_layernorm.bias': `${l}.norm_1.bias`,
        'self_attn.qkv_proj.weight': `${l}.attn.Wqkv.weight`,
        'self_attn.o_proj.weight': `${l}.attn.out_proj.weight`,
        'post_attention_layernorm.weight': `${l}.norm_2.weight`,
        'post_attention_layernorm.bias': `${l}.norm_2.bias`,
        'mlp.up_proj.weight': `${l}.ffn.up_proj.weight`,
        'mlp.down_proj.weight': `${l}.ffn.down_proj.weight`,
      },
    };
  },
};
