/**
 * Falcon (`FalconForCausalLM`), after transformers' `modeling_falcon.py`. Three layouts:
 * - 7B style: multi-query (one kv head), attention and MLP in parallel from one LayerNorm;
 * - 40B / 180B style (`new_decoder_architecture`): grouped kv heads, ln_attn + ln_mlp in parallel;
 * - RW style with `alibi`: ALiBi instead of RoPE, usually sequential with two LayerNorms.
 * query_key_value is fused per kv head; its rows are reordered on load to q | k | v.
 * Falcon adds ALiBi before the 1/sqrt(headDim) scale, so the slopes are scaled by it. This
 * matches transformers' SDPA path (its default); its eager path (5.17) adds ALiBi a second time
 * through the mask. transformers also rounds slope * position to bf16 as Falcon-RW did: exact
 * for power-of-2 head counts below position 256, a small difference beyond.
 */
import type { WeightMap, WeightTransform } from '../spec.js';
import type { ModelFamily } from '../registry.js';
import { alibiSlopes } from '../rope.js';
import { groupedQkvOrder } from '../weight-transform.js';
import { baseSpec } from './base.js';
import { optionalBool, optionalNumber, optionalPositiveInt, parseActivation, unsupported, type HfConfig } from './fields.js';

const FALCON_LAYER_NORM_EPS = 1e-5;

/** HF: multi-query (one kv head) unless the new architecture (grouped kv heads) is used. */
function layout(raw: HfConfig): { newArch: boolean; multiQuery: boolean } {
  const newArch = optionalBool(raw, 'new_decoder_architecture') ?? false;
  return { newArch, multiQuery: !newArch && (optionalBool(raw, 'multi_query') ?? true) };
}

export const falcon: ModelFamily = {
  name: 'falcon',
  architectures: ['FalconForCausalLM'],
  legacyKeys: { hidden_size: ['n_embed'], num_attention_heads: ['n_head'], num_hidden_layers: ['n_layer'], num_kv_heads: ['n_head_kv'] },
  defaults: { tieWordEmbeddings: true, maxPositionEmbeddings: 2048, bosTokenId: 11, eosTokenIds: [11] },
  spec(raw, c) {
    const { newArch, multiQuery } = layout(raw);
    const numKvHeads = multiQuery ? 1 : optionalPositiveInt(raw, 'num_kv_heads') ?? c.numHeads;
    if (!newArch && !multiQuery && numKvHeads !== c.numHeads) {
      throw unsupported('num_kv_heads', `"num_kv_heads" (${numKvHeads}) differs from "num_attention_heads" (${c.numHeads}) without new_decoder_architecture`);
    }
    if (c.numHeads % numKvHeads !== 0) throw unsupported('num_kv_heads', `"num_attention_heads" (${c.numHeads}) is not a multiple of "num_kv_heads" (${numKvHeads})`);
    const parallel = newArch || (optionalBool(raw, 'parallel_attn') ?? true);
    const alibi = optionalBool(raw, 'alibi') ?? false;
    const bias = optionalBool(raw, 'bias') ?? false;
    const base = baseSpec({ ...c, numKvHeads }, optionalPositiveInt(raw, 'ffn_hidden_size') ?? 4 * c.hiddenSize);
    return {
      ...base,
      norm: { type: 'layer', eps: optionalNumber(raw, 'layer_norm_epsilon') ?? FALCON_LAYER_NORM_EPS, weightOffset: 0 },
      activation: parseActivation(raw, 'activation', 'gelu'),
      gatedMlp: false,
      bias: { qkv: bias, o: bias, mlp: bias, lmHead: false },
      positional: alibi ? 'alibi' : 'rope',
      rope: alibi ? null : c.rope,
      alibiSlopes: alibi ? [...alibiSlopes(c.numHeads)].map((s) => s * base.attentionScale) : null,
      parallelResidual: parallel,
    };
  },
  weightMap(spec): WeightMap {
    const l = 'transformer.h.{i}';
    // per kv head: `group` q heads, then k, then v (multi-query: one kv head, already q | k | v)
    const group = spec.numHeads / spec.numKvHeads;
    const qkv: readonly WeightTransform[] = [{ kind: 'permuteBlocks', blockRows: spec.headDim, order: groupedQkvOrder(spec.numKvHeads, group) }];
    // parallel: ln_attn (+ ln_mlp) in the new architecture, else one input_layernorm for both blocks
    const attnNorm = (suffix: string) => spec.parallelResidual
      ? { names: `${l}.ln_attn.${suffix}`, fallback: `${l}.input_layernorm.${suffix}` }
      : `${l}.input_layernorm.${suffix}`;
    const mlpNorm = spec.parallelResidual ? 'ln_mlp' : 'post_attention_layernorm';
    return {
      basePrefix: 'transformer',
      global: {
        'embed_tokens.weight': 'transformer.word_embeddings.weight',
        'norm.weight': 'transformer.ln_f.weight',
        'norm.bias': 'transformer.ln_f.bias',
        ...(spec.tieWordEmbeddings ? {} : { 'lm_head.weight': 'lm_head.weight' }),
      },
      layer: {
        'input_layernorm.weight': attnNorm('weight'),
        'input_layernorm.bias': attnNorm('bias'),
        'self_attn.qkv_proj.weight': { names: `${l}.self_attention.query_key_value.weight`, transforms: qkv },
        'self_attn.qkv_proj.bias': { names: `${l}.self_attention.query_key_value.bias`, transforms: qkv },
        'self_attn.o_proj.weight': `${l}.self_attention.dense.weight`,
        'self_attn.o_proj.bias': `${l}.self_attention.dense.bias`,
        'post_attention_layernorm.weight': `${l}.${mlpNorm}.weight`,
        'post_attention_layernorm.bias': `${l}.${mlpNorm}.bias`,
        'mlp.up_proj.weight': `${l}.mlp.dense_h_to_4h.weight`,
        'mlp.up_proj.bias': `${l}.mlp.dense_h_to_4h.bias`,
        'mlp.down_proj.weight': `${l}.mlp.dense_4h_to_h.weight`,
        'mlp.down_proj.bias': `${l}.mlp.dense_4h_to_h.bias`,
      },
    };
  },
};
