/**
 * BLOOM (`BloomForCausalLM`), after transformers' `modeling_bloom.py`: ALiBi (BLOOM's slopes,
 * added to the scaled scores), LayerNorm on the embeddings, biases everywhere, ungated GELU-tanh
 * MLP of 4 x hidden, tied embeddings. query_key_value is fused per head ([numHeads, 3, headDim]
 * rows) and reordered to q | k | v on load.
 */
import type { WeightMap } from '../spec.js';
import type { ModelFamily } from '../registry.js';
import { alibiSlopes } from '../rope.js';
import { baseSpec, megatronLayerMap } from './base.js';
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
      layer: megatronLayerMap(l, 'self_attention', spec),
    };
  },
};
