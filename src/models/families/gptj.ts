/**
 * GPT-J (`GPTJForCausalLM`), after transformers' `modeling_gptj.py`: one LayerNorm feeds
 * attention and MLP in parallel; RoPE on the first `rotary_dim` dims of each head with
 * interleaved pairs (2i, 2i+1); q/k/v/out without bias, MLP and LM head with bias.
 */
import type { WeightMap } from '../spec.js';
import type { ModelFamily } from '../registry.js';
import { baseSpec, GPT2_STYLE_KEYS } from './base.js';
import { configInvalid, optionalNumber, optionalPositiveInt, parseActivation } from './fields.js';

const GPTJ_LAYER_NORM_EPS = 1e-5;
/** create_sinusoidal_positions: a fixed base, whatever the config says */
const GPTJ_ROPE_THETA = 10000;

export const gptj: ModelFamily = {
  name: 'gptj',
  architectures: ['GPTJForCausalLM'],
  attributeMap: GPT2_STYLE_KEYS,
  defaults: { tieWordEmbeddings: false, maxPositionEmbeddings: 2048, bosTokenId: 50256, eosTokenIds: [50256] },
  spec(raw, c) {
    // HF: rotary_dim null rotates the whole head
    const rotaryDim = optionalPositiveInt(raw, 'rotary_dim') ?? c.headDim;
    if (rotaryDim % 2 !== 0 || rotaryDim > c.headDim) {
      throw configInvalid('rotary_dim', `"rotary_dim" (${rotaryDim}) must be even and at most the head dim (${c.headDim})`);
    }
    return {
      ...baseSpec(c, c.intermediateSize ?? 4 * c.hiddenSize),
      norm: { type: 'layer', eps: optionalNumber(raw, 'layer_norm_epsilon') ?? GPTJ_LAYER_NORM_EPS, weightOffset: 0 },
      activation: parseActivation(raw, 'activation_function', 'gelu_tanh'),
      gatedMlp: false,
      bias: { qkv: false, o: false, mlp: true, lmHead: true },
      rope: { type: 'default', theta: GPTJ_ROPE_THETA, rotaryDim, style: 'gptj', factor: 1 },
      parallelResidual: true,
    };
  },
  weightMap(spec): WeightMap {
    const l = 'transformer.h.{i}';
    return {
      basePrefix: 'transformer',
      global: {
        'embed_tokens.weight': 'transformer.wte.weight',
        'norm.weight': 'transformer.ln_f.weight',
        'norm.bias': 'transformer.ln_f.bias',
        ...(spec.tieWordEmbeddings ? {} : { 'lm_head.weight': 'lm_head.weight' }),
        'lm_head.bias': 'lm_head.bias',
      },
      layer: {
        'input_layernorm.weight': `${l}.ln_1.weight`,
        'input_layernorm.bias': `${l}.ln_1.bias`,
        'self_attn.qkv_proj.weight': ['q_proj', 'k_proj', 'v_proj'].map((p) => `${l}.attn.${p}.weight`),
        'self_attn.o_proj.weight': `${l}.attn.out_proj.weight`,
        'mlp.up_proj.weight': `${l}.mlp.fc_in.weight`,
        'mlp.up_proj.bias': `${l}.mlp.fc_in.bias`,
        'mlp.down_proj.weight': `${l}.mlp.fc_out.weight`,
        'mlp.down_proj.bias': `${l}.mlp.fc_out.bias`,
      },
    };
  },
};
