/**
 * StarCoder2 (`Starcoder2ForCausalLM`), after transformers' `modeling_starcoder2.py`: Llama's
 * attention (GQA, RoPE) with biases, LayerNorm, an ungated GELU-tanh MLP (c_fc, c_proj), a
 * sliding window on every layer when set, tied embeddings.
 */
import type { WeightMap } from '../spec.js';
import type { ModelFamily } from '../registry.js';
import { baseSpec, requireIntermediate } from './base.js';
import { optionalBool, optionalNumber, optionalPositiveInt, parseActivation } from './fields.js';

const STARCODER2_NORM_EPS = 1e-5;

export const starcoder2: ModelFamily = {
  name: 'starcoder2',
  architectures: ['Starcoder2ForCausalLM'],
  defaults: { tieWordEmbeddings: true, maxPositionEmbeddings: 4096, bosTokenId: 50256, eosTokenIds: [50256] },
  spec(raw, c) {
    const bias = optionalBool(raw, 'use_bias') ?? true;
    return {
      ...baseSpec(c, requireIntermediate(c)),
      norm: { type: 'layer', eps: optionalNumber(raw, 'norm_epsilon') ?? STARCODER2_NORM_EPS, weightOffset: 0 },
      activation: parseActivation(raw, 'hidden_act', 'gelu_tanh'),
      gatedMlp: false,
      bias: { qkv: bias, o: bias, mlp: bias, lmHead: false },
      slidingWindow: optionalPositiveInt(raw, 'sliding_window') ?? null,
    };
  },
  weightMap(spec): WeightMap {
    const l = 'model.layers.{i}';
    const qkv = (suffix: string): string[] => ['q_proj', 'k_proj', 'v_proj'].map((p) => `${l}.self_attn.${p}.${suffix}`);
    return {
      basePrefix: 'model',
      global: {
        'embed_tokens.weight': 'model.embed_tokens.weight',
        'norm.weight': 'model.norm.weight',
        'norm.bias': 'model.norm.bias',
        ...(spec.tieWordEmbeddings ? {} : { 'lm_head.weight': 'lm_head.weight' }),
      },
      layer: {
        'input_layernorm.weight': `${l}.input_layernorm.weight`,
        'input_layernorm.bias': `${l}.input_layernorm.bias`,
        'self_attn.qkv_proj.weight': qkv('weight'),
        'self_attn.qkv_proj.bias': qkv('bias'),
        'self_attn.o_proj.weight': `${l}.self_attn.o_proj.weight`,
        'self_attn.o_proj.bias': `${l}.self_attn.o_proj.bias`,
        'post_attention_layernorm.weight': `${l}.post_attention_layernorm.weight`,
        'post_attention_layernorm.bias': `${l}.post_attention_layernorm.bias`,
        'mlp.up_proj.weight': `${l}.mlp.c_fc.weight`,
        'mlp.up_proj.bias': `${l}.mlp.c_fc.bias`,
        'mlp.down_proj.weight': `${l}.mlp.c_proj.weight`,
        'mlp.down_proj.bias': `${l}.mlp.c_proj.bias`,
      },
    };
  },
};
