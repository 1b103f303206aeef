/**
 * Mistral (`MistralForCausalLM`), after transformers' `configuration_mistral.py`: Llama
 * without attention/MLP biases, plus sliding-window attention on every layer.
 */
import type { ModelFamily } from '../registry.js';
import { llamaSpec, llamaWeightMap } from './llama.js';
import { get, optionalPositiveInt } from './fields.js';

/** MistralConfig's `sliding_window` default when the key is absent (null disables it) */
const MISTRAL_DEFAULT_SLIDING_WINDOW = 4096;

export const mistral: ModelFamily = {
  name: 'mistral',
  architectures: ['MistralForCausalLM'],
  defaults: { tieWordEmbeddings: false, maxPositionEmbeddings: 4096 * 32, bosTokenId: 1, eosTokenIds: [2] },
  spec(raw, common) {
    const slidingWindow = !('sliding_window' in raw)
      ? MISTRAL_DEFAULT_SLIDING_WINDOW
      : get(raw, 'sliding_window') === undefined ? null : optionalPositiveInt(raw, 'sliding_window')!;
    const spec = llamaSpec(raw, common);
    return { ...spec, bias: { qkv: false, o: false, mlp: false, lmHead: false }, slidingWindow };
  },
  weightMap: llamaWeightMap,
};
