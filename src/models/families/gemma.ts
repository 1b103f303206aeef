/**
 * Gemma (`GemmaForCausalLM`), after transformers' `modeling_gemma.py`: Llama's layer with
 * (1 + w) RMSNorm, embeddings scaled by sqrt(hidden), a GELU-tanh gated MLP, head_dim given
 * explicitly (q size may differ from hidden), tied embeddings.
 */
import type { ModelSpec } from '../spec.js';
import type { CommonFields } from '../config.js';
import type { ModelFamily } from '../registry.js';
import { llamaSpec, llamaWeightMap } from './llama.js';
import { get, parseActivation, type HfConfig } from './fields.js';

/** Gemma's norms multiply by (1 + weight) */
export const GEMMA_NORM_WEIGHT_OFFSET = 1;

/** The switches Gemma and Gemma 2 share. */
export function gemmaSpec(raw: HfConfig, c: CommonFields): ModelSpec {
  const spec = llamaSpec(raw, c);
  // transformers 4.x read `hidden_activation` (default gelu_pytorch_tanh, ignoring `hidden_act`: Gemma 7B's
  // config says "gelu" there); transformers 5 reads `hidden_act`. The first present wins here.
  const actKey = get(raw, 'hidden_activation') !== undefined ? 'hidden_activation' : 'hidden_act';
  return {
    ...spec,
    norm: { ...spec.norm, weightOffset: GEMMA_NORM_WEIGHT_OFFSET },
    activation: parseActivation(raw, actKey, 'gelu_tanh'),
    embeddingScale: Math.sqrt(c.hiddenSize),
  };
}

export const gemma: ModelFamily = {
  name: 'gemma',
  architectures: ['GemmaForCausalLM'],
  defaults: { tieWordEmbeddings: true, maxPositionEmbeddings: 8192, bosTokenId: 2, eosTokenIds: [1] },
  spec: gemmaSpec,
  weightMap: llamaWeightMap,
};
