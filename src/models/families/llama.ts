/**
 * Llama 1/2/3/3.1 (`LlamaForCausalLM`), after transformers' `configuration_llama.py` /
 * `modeling_llama.py`. The spec and weight map here are the base the other
 * Llama-shaped families (Mistral, Qwen2, ...) start from.
 */
import type { ModelSpec, WeightMap } from '../spec.js';
import type { CommonFields } from '../config.js';
import type { ModelFamily } from '../registry.js';
import { optionalBool, optionalNumber, parseActivation, type HfConfig } from './fields.js';
import { baseSpec, requireIntermediate } from './base.js';

const LLAMA_RMS_NORM_EPS = 1e-6;

/** A pre-norm RMSNorm decoder with a gated SiLU MLP and RoPE, no biases: Llama's switches. */
export function llamaSpec(raw: HfConfig, c: CommonFields): ModelSpec {
  const attentionBias = optionalBool(raw, 'attention_bias') ?? false;
  const mlpBias = optionalBool(raw, 'mlp_bias') ?? false;
  return {
    ...baseSpec(c, requireIntermediate(c)),
    norm: { type: 'rms', eps: optionalNumber(raw, 'rms_norm_eps') ?? LLAMA_RMS_NORM_EPS, weightOffset: 0 },
    activation: parseActivation(raw, 'hidden_act', 'silu'),
    bias: { qkv: attentionBias, o: attentionBias, mlp: mlpBias, lmHead: false },
  };
}

/**
 * HF names of a `model.layers.{i}` decoder with q/k/v/o and gate/up/down projections.
 * Biases appear only when the spec has them; with tied embeddings `lm_head.weight` is left
 * out (the decoder reads `embed_tokens.weight`).
 */
export function llamaWeightMap(spec: ModelSpec): WeightMap {
  const l = 'model.layers.{i}';
  const qkv = (suffix: string): string[] => ['q_proj', 'k_proj', 'v_proj'].map((p) => `${l}.self_attn.${p}.${suffix}`);
  const gateUp = (suffix: string): string[] => ['gate_proj', 'up_proj'].map((p) => `${l}.mlp.${p}.${suffix}`);
  return {
    global: {
      'embed_tokens.weight': 'model.embed_tokens.weight',
      'norm.weight': 'model.norm.weight',
      ...(spec.tieWordEmbeddings ? {} : { 'lm_head.weight': 'lm_head.weight' }),
    },
    layer: {
      'input_layernorm.weight': `${l}.input_layernorm.weight`,
      'self_attn.qkv_proj.weight': qkv('weight'),
      ...(spec.bias.qkv ? { 'self_attn.qkv_proj.bias': qkv('bias') } : {}),
      'self_attn.o_proj.weight': `${l}.self_attn.o_proj.weight`,
      ...(spec.bias.o ? { 'self_attn.o_proj.bias': `${l}.self_attn.o_proj.bias` } : {}),
      'post_attention_layernorm.weight': `${l}.post_attention_layernorm.weight`,
      'mlp.gate_up_proj.weight': gateUp('weight'),
      ...(spec.bias.mlp ? { 'mlp.gate_up_proj.bias': gateUp('bias') } : {}),
      'mlp.down_proj.weight': `${l}.mlp.down_proj.weight`,
      ...(spec.bias.mlp ? { 'mlp.down_proj.bias': `${l}.mlp.down_proj.bias` } : {}),
    },
  };
}

export const llama: ModelFamily = {
  name: 'llama',
  architectures: ['LlamaForCausalLM'],
  defaults: { tieWordEmbeddings: false, maxPositionEmbeddings: 2048, bosTokenId: 1, eosTokenIds: [2] },
  spec: llamaSpec,
  weightMap: llamaWeightMap,
};
