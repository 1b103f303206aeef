/**
 * Gemma 2 (`Gemma2ForCausalLM`), after transformers' `modeling_gemma2.py`: Gemma plus
 * sandwich norms (attention and MLP outputs normed before their residual add; the MLP input
 * norm is HF's pre_feedforward_layernorm), tanh soft-capping of attention scores and of the
 * final logits, softmax scale query_pre_attn_scalar^-1/2, and a sliding window on the layers
 * `layer_types` marks "sliding_attention" (by default every other layer, starting with the first).
 */
import type { WeightMap } from '../spec.js';
import type { ModelFamily } from '../registry.js';
import { gemmaSpec } from './gemma.js';
import { llamaWeightMap } from './llama.js';
import { configInvalid, get, optionalNumber, optionalPositiveInt, type HfConfig } from './fields.js';

/** Gemma2Config defaults */
const GEMMA2_DEFAULT_SLIDING_WINDOW = 4096;
const GEMMA2_DEFAULT_QUERY_PRE_ATTN_SCALAR = 256;
const GEMMA2_DEFAULT_ATTN_SOFTCAP = 50;
const GEMMA2_DEFAULT_FINAL_SOFTCAP = 30;

/** `layer_types` as booleans (true = sliding); default: layers 0, 2, 4, ... slide */
function slidingLayers(raw: HfConfig, numLayers: number): boolean[] {
  const types = get(raw, 'layer_types');
  if (types === undefined) return Array.from({ length: numLayers }, (_, i) => (i + 1) % 2 === 1);
  if (!Array.isArray(types) || types.length !== numLayers || !types.every((t) => t === 'sliding_attention' || t === 'full_attention')) {
    throw configInvalid('layer_types', `"layer_types" must list "sliding_attention" or "full_attention" for each of the ${numLayers} layers (got ${JSON.stringify(types)})`);
  }
  return types.map((t) => t === 'sliding_attention');
}

/** a soft-cap value, its default when the key is absent, none when it is null */
function softcap(raw: HfConfig, key: string, fallback: number): number | null {
  if (!(key in raw)) return fallback;
  return optionalNumber(raw, key) ?? null;
}

export const gemma2: ModelFamily = {
  name: 'gemma2',
  architectures: ['Gemma2ForCausalLM'],
  defaults: { tieWordEmbeddings: true, maxPositionEmbeddings: 8192, bosTokenId: 2, eosTokenIds: [1] },
  spec(raw, c) {
    const window = 'sliding_window' in raw ? optionalPositiveInt(raw, 'sliding_window') ?? null : GEMMA2_DEFAULT_SLIDING_WINDOW;
    const scalar = optionalNumber(raw, 'query_pre_attn_scalar') ?? GEMMA2_DEFAULT_QUERY_PRE_ATTN_SCALAR;
    return {
      ...gemmaSpec(raw, c),
      attentionScale: scalar ** -0.5,
      attnLogitSoftcap: softcap(raw, 'attn_logit_softcapping', GEMMA2_DEFAULT_ATTN_SOFTCAP),
      finalLogitSoftcap: softcap(raw, 'final_logit_softcapping', GEMMA2_DEFAULT_FINAL_SOFTCAP),
      slidingWindow: window,
      slidingLayers: window === null ? null : slidingLayers(raw, c.numLayers),
      sandwichNorms: true,
    };
  },
  weightMap(spec): WeightMap {
    const base = llamaWeightMap(spec);
    const l = 'model.layers.{i}';
    return {
      ...base,
      layer: {
        ...base.layer,
        'post_attention_layernorm.weight': `${l}.pre_feedforward_layernorm.weight`,
        'attn_output_layernorm.weight': `${l}.post_attention_layernorm.weight`,
        'mlp_output_layernorm.weight': `${l}.post_feedforward_layernorm.weight`,
      },
    };
  },
};
