/**
 * OPT (`OPTForCausalLM`), after transformers' `modeling_opt.py`: learned positions (the table's
 * first 2 rows are never used and are dropped on load), ReLU MLP, biases, LayerNorm either before
 * each block (`do_layer_norm_before`, with a final norm) or after each residual add (OPT-350m,
 * no final norm), and project_in / project_out when `word_embed_proj_dim` != hidden.
 */
import type { WeightMap } from '../spec.js';
import type { ModelFamily } from '../registry.js';
import { baseSpec } from './base.js';
import { optionalBool, optionalPositiveInt, parseActivation, unsupported } from './fields.js';

/** OPTLearnedPositionalEmbedding looks up position + 2 */
const OPT_POSITION_OFFSET = 2;
const OPT_LAYER_NORM_EPS = 1e-5; // nn.LayerNorm's default

export const opt: ModelFamily = {
  name: 'opt',
  architectures: ['OPTForCausalLM'],
  attributeMap: { intermediate_size: 'ffn_dim' },
  defaults: { tieWordEmbeddings: true, maxPositionEmbeddings: 2048, bosTokenId: 2, eosTokenIds: [2] },
  spec(raw, c) {
    const preNorm = optionalBool(raw, 'do_layer_norm_before') ?? true;
    if (optionalBool(raw, 'layer_norm_elementwise_affine') === false) {
      throw unsupported('layer_norm_elementwise_affine', '"layer_norm_elementwise_affine": false (LayerNorm without weights) is not supported');
    }
    if (preNorm && optionalBool(raw, '_remove_final_layer_norm')) {
      throw unsupported('_remove_final_layer_norm', '"_remove_final_layer_norm": true is not supported');
    }
    const bias = optionalBool(raw, 'enable_bias') ?? true;
    return {
      ...baseSpec(c, c.intermediateSize ?? 4 * c.hiddenSize),
      norm: { type: 'layer', eps: OPT_LAYER_NORM_EPS, weightOffset: 0 },
      activation: parseActivation(raw, 'activation_function', 'relu'),
      gatedMlp: false,
      bias: { qkv: bias, o: bias, mlp: bias, lmHead: false },
      positional: 'learned',
      rope: null,
      normPlacement: preNorm ? 'pre' : 'post',
      wordEmbedDim: optionalPositiveInt(raw, 'word_embed_proj_dim') ?? c.hiddenSize,
    };
  },
  weightMap(spec): WeightMap {
    const d = 'model.decoder';
    const l = `${d}.layers.{i}`;
    const qkv = (suffix: string): string[] => ['q_proj', 'k_proj', 'v_proj'].map((p) => `${l}.self_attn.${p}.${suffix}`);
    return {
      basePrefix: 'model',
      global: {
        'embed_tokens.weight': `${d}.embed_tokens.weight`,
        'embed_positions.weight': { names: `${d}.embed_positions.weight`, transforms: [{ kind: 'sliceRows', start: OPT_POSITION_OFFSET }] },
        'project_in.weight': `${d}.project_in.weight`,
        'project_out.weight': `${d}.project_out.weight`,
        'norm.weight': `${d}.final_layer_norm.weight`,
        'norm.bias': `${d}.final_layer_norm.bias`,
        ...(spec.tieWordEmbeddings ? {} : { 'lm_head.weight': 'lm_head.weight' }),
      },
      layer: {
        'input_layernorm.weight': `${l}.self_attn_layer_norm.weight`,
        'input_layernorm.bias': `${l}.self_attn_layer_norm.bias`,
        'self_attn.qkv_proj.weight': qkv('weight'),
        'self_attn.qkv_proj.bias': qkv('bias'),
        'self_attn.o_proj.weight': `${l}.self_attn.out_proj.weight`,
        'self_attn.o_proj.bias': `${l}.self_attn.out_proj.bias`,
        'post_attention_layernorm.weight': `${l}.final_layer_norm.weight`,
        'post_attention_layernorm.bias': `${l}.final_layer_norm.bias`,
        'mlp.up_proj.weight': `${l}.fc1.weight`,
        'mlp.up_proj.bias': `${l}.fc1.bias`,
        'mlp.down_proj.weight': `${l}.fc2.weight`,
        'mlp.down_proj.bias': `${l}.fc2.bias`,
      },
    };
  },
};
