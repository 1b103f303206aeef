/**
 * Qwen3 (`Qwen3ForCausalLM`), after transformers' `modeling_qwen3.py`: Llama's layer with an
 * RMSNorm over each q and k head before RoPE (q_norm / k_norm), no q/k/v bias by default, and
 * Qwen2's sliding-window rules.
 */
import type { WeightMap } from '../spec.js';
import type { ModelFamily } from '../registry.js';
import { llamaSpec, llamaWeightMap } from './llama.js';
import { qwen2SlidingWindow } from './qwen2.js';

export const qwen3: ModelFamily = {
  name: 'qwen3',
  architectures: ['Qwen3ForCausalLM'],
  defaults: { tieWordEmbeddings: false, maxPositionEmbeddings: 32768 },
  spec(raw, c) {
    const spec = llamaSpec(raw, c);
    return { ...spec, bias: { ...spec.bias, mlp: false }, qkNorm: true, slidingWindow: qwen2SlidingWindow(raw, spec.numLayers) };
  },
  weightMap(spec): WeightMap {
    const base = llamaWeightMap(spec);
    const l = 'model.layers.{i}';
    return {
      ...base,
      layer: { ...base.layer, 'self_attn.q_norm.weight': `${l}.self_attn.q_norm.weight`, 'self_attn.k_norm.weight': `${l}.self_attn.k_norm.weight` },
    };
  },
};
