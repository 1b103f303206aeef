/**
 * GPT-2 (`GPT2LMHeadModel`), after transformers' `modeling_gpt2.py`: learned positions, pre-norm
 * LayerNorm, an ungated GELU-tanh MLP, biases everywhere, tied embeddings. Its Conv1D modules
 * store weights [in, out], so each is transposed on load; c_attn holds q | k | v.
 */
import type { WeightMap, WeightTransform } from '../spec.js';
import type { ModelFamily } from '../registry.js';
import { baseSpec, GPT2_STYLE_KEYS } from './base.js';
import { optionalBool, optionalNumber, parseActivation, unsupported } from './fields.js';

const GPT2_LAYER_NORM_EPS = 1e-5;
const CONV1D: readonly WeightTransform[] = [{ kind: 'transpose' }];

export const gpt2: ModelFamily = {
  name: 'gpt2',
  architectures: ['GPT2LMHeadModel'],
  attributeMap: GPT2_STYLE_KEYS,
  defaults: { tieWordEmbeddings: true, maxPositionEmbeddings: 1024, bosTokenId: 50256, eosTokenIds: [50256] },
  spec(raw, c) {
    if (optionalBool(raw, 'scale_attn_by_inverse_layer_idx')) {
      throw unsupported('scale_attn_by_inverse_layer_idx', '"scale_attn_by_inverse_layer_idx": true (a per-layer attention scale) is not supported');
    }
    const scaled = optionalBool(raw, 'scale_attn_weights') ?? true;
    return {
      ...baseSpec(c, c.intermediateSize ?? 4 * c.hiddenSize), // HF: n_inner or 4 * n_embd
      norm: { type: 'layer', eps: optionalNumber(raw, 'layer_norm_epsilon') ?? GPT2_LAYER_NORM_EPS, weightOffset: 0 },
      activation: parseActivation(raw, 'activation_function', 'gelu_tanh'),
      gatedMlp: false,
      bias: { qkv: true, o: true, mlp: true, lmHead: false },
      positional: 'learned',
      rope: null,
      attentionScale: scaled ? 1 / Math.sqrt(c.headDim) : 1,
    };
  },
  weightMap(spec): WeightMap {
    const l = 'transformer.h.{i}';
    return {
      basePrefix: 'transformer',
      global: {
        'embed_tokens.weight': 'transformer.wte.weight',
        'embed_positions.weight': 'transformer.wpe.weight',
        'norm.weight': 'transformer.ln_f.weight',
        'norm.bias': 'transformer.ln_f.bias',
        ...(spec.tieWordEmbeddings ? {} : { 'lm_head.weight': 'lm_head.weight' }),
      },
      layer: {
        'input_layernorm.weight': `${l}.ln_1.weight`,
        'input_layernorm.bias': `${l}.ln_1.bias`,
        'self_attn.qkv_proj.weight': { names: `${l}.attn.c_attn.weight`, transforms: CONV1D },
        'self_attn.qkv_proj.bias': `${l}.attn.c_attn.bias`,
        'self_attn.o_proj.weight': { names: `${l}.attn.c_proj.weight`, transforms: CONV1D },
        'self_attn.o_proj.bias': `${l}.attn.c_proj.bias`,
        'post_attention_layernorm.weight': `${l}.ln_2.weight`,
        'post_attention_layernorm.bias': `${l}.ln_2.bias`,
        'mlp.up_proj.weight': { names: `${l}.mlp.c_fc.weight`, transforms: CONV1D },
        'mlp.up_proj.bias': `${l}.mlp.c_fc.bias`,
        'mlp.down_proj.weight': { names: `${l}.mlp.c_proj.weight`, transforms: CONV1D },
        'mlp.down_proj.bias': `${l}.mlp.c_proj.bias`,
      },
    };
  },
};
