/**
 * GPT-NeoX / Pythia (`GPTNeoXForCausalLM`), after transformers' `modeling_gpt_neox.py`:
 * LayerNorm, partial rotary (NeoX halves) on the first `rotary_pct` of each head, parallel
 * residual (x + attn(ln1(x)) + mlp(ln2(x))) or sequential, ungated GELU MLP with biases.
 * query_key_value is fused per head ([numHeads, 3, headDim] rows) and reordered to q | k | v.
 */
import type { WeightMap } from '../spec.js';
import type { ModelFamily } from '../registry.js';
import { baseSpec, requireIntermediate, megatronLayerMap } from './base.js';
import { get, isObject, optionalBool, optionalNumber, parseActivation, type HfConfig } from './fields.js';

const NEOX_LAYER_NORM_EPS = 1e-5;
/** GPTNeoXConfig: partial_rotary_factor (or legacy rotary_pct) defaults to 0.25, not 1 */
const NEOX_DEFAULT_ROTARY_PCT = 0.25;

function hasPartialRotary(raw: HfConfig): boolean {
  const params = get(raw, 'rope_parameters');
  return get(raw, 'partial_rotary_factor') !== undefined || (isObject(params) && get(params, 'partial_rotary_factor') !== undefined);
}

export const gptNeox: ModelFamily = {
  name: 'gpt_neox',
  architectures: ['GPTNeoXForCausalLM'],
  legacyKeys: { partial_rotary_factor: ['rotary_pct'], rope_theta: ['rotary_emb_base'] },
  defaults: { tieWordEmbeddings: false, maxPositionEmbeddings: 2048, bosTokenId: 0, eosTokenIds: [2] },
  spec(raw, c) {
    const attentionBias = optionalBool(raw, 'attention_bias') ?? true;
    const rotaryDim = hasPartialRotary(raw) ? c.rope.rotaryDim : Math.trunc(c.headDim * NEOX_DEFAULT_ROTARY_PCT);
    return {
      ...baseSpec(c, requireIntermediate(c)),
      rope: { ...c.rope, rotaryDim },
      norm: { type: 'layer', eps: optionalNumber(raw, 'layer_norm_eps') ?? NEOX_LAYER_NORM_EPS, weightOffset: 0 },
      activation: parseActivation(raw, 'hidden_act', 'gelu'),
      gatedMlp: false,
      bias: { qkv: attentionBias, o: attentionBias, mlp: true, lmHead: false },
      parallelResidual: optionalBool(raw, 'use_parallel_residual') ?? true,
    };
  },
  weightMap(spec): WeightMap {
    const l = 'gpt_neox.layers.{i}';
    return {
      basePrefix: 'gpt_neox',
      global: {
        'embed_tokens.weight': 'gpt_neox.embed_in.weight',
        'norm.weight': 'gpt_neox.final_layer_norm.weight',
        'norm.bias': 'gpt_neox.final_layer_norm.bias',
        ...(spec.tieWordEmbeddings ? {} : { 'lm_head.weight': 'embed_out.weight' }),
      },
      layer: megatronLayerMap(l, 'attention', spec),
    };
  },
};
