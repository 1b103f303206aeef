/**
 * Mixtral (`MixtralForCausalLM`), after transformers' `modeling_mixtral.py`: Mistral's attention
 * with a mixture of experts in place of the MLP: softmax over `num_local_experts` router logits,
 * the top `num_experts_per_tok` renormalised to sum to 1, each expert a SiLU-gated MLP
 * (w1 = gate, w3 = up, w2 = down). Experts load stacked: gate|up [E, 2I, H], down [E, H, I], from
 * the per-expert tensors of Hub checkpoints or transformers 5's fused `mlp.experts.*`.
 */
import type { WeightMap } from '../spec.js';
import type { ModelFamily } from '../registry.js';
import { llamaSpec, llamaWeightMap } from './llama.js';
import { get, optionalPositiveInt, unsupported } from './fields.js';

const MIXTRAL_DEFAULT_EXPERTS = 8;
const MIXTRAL_DEFAULT_TOP_K = 2;

export const mixtral: ModelFamily = {
  name: 'mixtral',
  architectures: ['MixtralForCausalLM'],
  defaults: { tieWordEmbeddings: false, maxPositionEmbeddings: 4096 * 32, ropeTheta: 1e6, bosTokenId: 1, eosTokenIds: [2] },
  spec(raw, c) {
    const numExperts = optionalPositiveInt(raw, 'num_local_experts') ?? MIXTRAL_DEFAULT_EXPERTS;
    const topK = optionalPositiveInt(raw, 'num_experts_per_tok') ?? MIXTRAL_DEFAULT_TOP_K;
    if (topK > numExperts) throw unsupported('num_experts_per_tok', `"num_experts_per_tok" (${topK}) exceeds "num_local_experts" (${numExperts})`);
    const spec = llamaSpec(raw, c);
    return {
      ...spec,
      bias: { qkv: false, o: false, mlp: false, lmHead: false },
      slidingWindow: get(raw, 'sliding_window') === undefined ? null : optionalPositiveInt(raw, 'sliding_window')!,
      moe: { numExperts, topK, renormalize: true },
    };
  },
  weightMap(spec): WeightMap {
    const base = llamaWeightMap(spec);
    const l = 'model.layers.{i}';
    const E = spec.moe?.numExperts ?? 0;
    const I = spec.intermediateSize;
    const H = spec.hiddenSize;
    const expert = (j: number, w: string) => `${l}.block_sparse_moe.experts.${j}.${w}.weight`;
    const experts = Array.from({ length: E }, (_, j) => j);
    return {
      ...base,
      layer: {
        'input_layernorm.weight': base.layer['input_layernorm.weight'],
        'self_attn.qkv_proj.weight': base.layer['self_attn.qkv_proj.weight'],
        'self_attn.o_proj.weight': base.layer['self_attn.o_proj.weight'],
        'post_attention_layernorm.weight': base.layer['post_attention_layernorm.weight'],
        'mlp.router.weight': { names: `${l}.block_sparse_moe.gate.weight`, fallback: `${l}.mlp.gate.weight` },
        'mlp.gate_up_proj.weight': {
          names: experts.flatMap((j) => [expert(j, 'w1'), expert(j, 'w3')]),
          transforms: [{ kind: 'reshape', shape: [E, 2 * I, H] }],
          fallback: `${l}.mlp.experts.gate_up_proj`,
        },
        'mlp.down_proj.weight': {
          names: experts.map((j) => expert(j, 'w2')),
          transforms: [{ kind: 'reshape', shape: [E, H, I] }],
          fallback: `${l}.mlp.experts.down_proj`,
        },
      },
    };
  },
};
