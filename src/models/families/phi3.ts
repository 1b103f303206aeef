/**
 * Phi-3 (`Phi3ForCausalLM`), after transformers' `modeling_phi3.py`: Llama's layer with the
 * projections stored packed (qkv_proj = q | k | v, gate_up_proj = gate | up), optional partial
 * rotary and a sliding window on every layer. LongRoPE ("longrope" / "su") is refused by the
 * RoPE parser.
 */
import type { WeightMap } from '../spec.js';
import type { ModelFamily } from '../registry.js';
import { llamaSpec } from './llama.js';
import { optionalPositiveInt } from './fields.js';

export const phi3: ModelFamily = {
  name: 'phi3',
  architectures: ['Phi3ForCausalLM'],
  defaults: { tieWordEmbeddings: false, maxPositionEmbeddings: 4096, bosTokenId: 1, eosTokenIds: [32000] },
  spec(raw, c) {
    return { ...llamaSpec(raw, c), bias: { qkv: false, o: false, mlp: false, lmHead: false }, slidingWindow: optionalPositiveInt(raw, 'sliding_window') ?? null };
  },
  weightMap(spec): WeightMap {
    const l = 'model.layers.{i}';
    return {
      basePrefix: 'model',
      global: {
        'embed_tokens.weight': 'model.embed_tokens.weight',
        'norm.weight': 'model.norm.weight',
        ...(spec.tieWordEmbeddings ? {} : { 'lm_head.weight': 'lm_head.weight' }),
      },
      layer: {
        'input_layernorm.weight': `${l}.input_layernorm.weight`,
        'self_attn.qkv_proj.weight': `${l}.self_attn.qkv_proj.weight`,
        'self_attn.o_proj.weight': `${l}.self_attn.o_proj.weight`,
        'post_attention_layernorm.weight': `${l}.post_attention_layernorm.weight`,
        'mlp.gate_up_proj.weight': `${l}.mlp.gate_up_proj.weight`,
        'mlp.down_proj.weight': `${l}.mlp.down_proj.weight`,
      },
    };
  },
};
