/**
 * BLOOM (`BloomForCausalLM`), after transformers' `modeling_bloom.py`: ALiBi (BLOOM's slopes,
 * added to the scaled scores), LayerNorm on the embeddings, biases everywhere, ungated GELU-tanh
 * MLP of 4 x hidden, tied embeddings. query_key_value is fused per head ([numHeads, 3, headDim]
 * rows) and reordered to q | k | v on load.
 */
import type { WeightMap, WeightTransform } from '../spec.js';
import type { ModelFamily } from '../registry.js';
import { alibiSlopes } from '../rope.js';
import { groupedQkvOrder } from '../weight-transform.js';
import { baseSpec } from './base.js';
import { optionalBool, optionalNumber, unsupported } from './fields.js';

const BLOOM_LAYER_NORM_EPS = 1e-5;
/** ALiBi needs no position table; this only bounds the default context (BLOOM was trained at 2048) */
const BLOOM_DEFAULT_MAX_POSITIONS = 2048;

export const bloom: ModelFamily = {
  name: 'bloom',
  architectures: ['BloomForCausalLM'],
  attributeMap: { num_hidden_layers: 'n_layer', num_attention_heads: 'n_head', max_position_embeddings: 'seq_length' },
  legacyKeys: { hidden_size: ['n_embed'] },
  defaults: { tieWordEmbeddings: true, maxPositionEmbeddings: BLOOM_DEFAULT_MAX_POSITIONS, bosTokenId: 1, eosTokenIds: [2] },
  spec(raw, c) {
    if (optionalBool(raw, 'apply_residual_connection_post_layernorm')) {
      throw unsupported('apply_residual_connection_post_layernorm', '"apply_residual_connection_post_layernorm": true is not supported');
    }
    return {
      ...baseSpec(c, 4 * c.hiddenSize),
      norm: { type: 'layer', eps: optionalNumber(raw, 'layer_norm_epsilon') ?? BLOOM_LAYER_NORM_EPS, weightOffset: 0 },
      activation: 'gelu_tanh', // bloom_gelu_forward: the tanh approximation
      gatedMlp: false,
      bias: { qkv: true, o: true, mlp: true, lmHead: false },
      positional: 'alibi',
      rope: null,
      alibiSlopes: [...alibiSlopes(c.numHeads)],
      embeddingNorm: true,
    };
  },
  weightMap(spec): WeightMap {
    const l = 'transformer.h.{i}';
    const perHead: readonly WeightTransform[] = [{ kind: 'permuteBlocks', blockRows: spec.headDim, order: groupedQkvOrder(spec.numHeads, 1) }];
    return {
      basePrefix: 'transformer',
      global: {
        'embed_tokens.weight': 'transformer.word_embeddings.weight',
        'embed_layernorm.weight': 'transformer.word_embeddings_layernorm.weight',
        'embed_layernorm.bias': 'transformer.word_embeddings_layernorm.bias',
        'norm.weight': 'transformer.ln_f.weight',
        'norm.bias': 'transformer.ln_f.bias',
        ...(spec.tieWordEmbeddings ? {} : { 'lm_head.weight': 'lm_head.weight' }),
      },
      layer: {
        'input_layernorm.weight': `${l}.input_layernorm.weight`,
        'input_layernorm.bias': `${l}.input_layernorm.bias`,
        'self_attn.qkv_proj.weight': { names: `${l}.self_attention.query_key_value.weight`, transforms: perHead },
        'self_attn.qkv_proj.bias': { names: `${l}.self_attention.query_key_value.bias`, transforms: perHead },
        'self_attn.o_proj.weight': `${l}.self_attention.dense.weight`,
        'self_attn.o_proj.bias': `${l}.self_attention.dense.bias`,
        'post_attention_layernorm.weight': `${l}.post_attention_layernorm.weight`,
        'post_attention_layernorm.bias': `${l}.post_attention_layernorm.bias`,
        'mlp.up_proj.weight': `${l}.mlp.dense_h_to_4h.weight`,
        'mlp.up_proj.bias': `${l}.mlp.dense_h_to_4h.bias`,
        'mlp.down_proj.weight': `${l}.mlp.dense_4h_to_h.weight`,
        'mlp.down_proj.bias': `${l}.mlp.dense_4h_to_h.bias`,
      },
    };
  },
};
