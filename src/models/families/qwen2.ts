/**
 * Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`), after transformers' `configuration_qwen2.py`:
 * Llama with q/k/v biases (o_proj has none), optional sliding window.
 */
import { PeregrineError } from '../../errors.js';
import type { ModelFamily } from '../registry.js';
import { llamaSpec, llamaWeightMap } from './llama.js';
import { get, optionalBool, optionalNonNegativeInt, optionalPositiveInt, type HfConfig } from './fields.js';

/** Qwen2Config defaults */
const QWEN2_DEFAULT_SLIDING_WINDOW = 4096;
const QWEN2_DEFAULT_MAX_WINDOW_LAYERS = 28;

/**
 * HF: `sliding_window` applies only with `use_sliding_window`, and then only to the layers
 * `layer_types` marks "sliding_attention" (default: layers >= `max_window_layers`).
 * The spec has one window for all layers, so a mix of sliding and full layers is refused.
 */
export function qwen2SlidingWindow(raw: HfConfig, numLayers: number): number | null {
  if (!(optionalBool(raw, 'use_sliding_window') ?? false)) return null;
  const window = 'sliding_window' in raw ? optionalPositiveInt(raw, 'sliding_window') ?? null : QWEN2_DEFAULT_SLIDING_WINDOW;
  if (window === null) return null;
  const layerTypes = get(raw, 'layer_types');
  const maxWindowLayers = optionalNonNegativeInt(raw, 'max_window_layers') ?? QWEN2_DEFAULT_MAX_WINDOW_LAYERS;
  const numSliding = Array.isArray(layerTypes)
    ? layerTypes.filter((t) => t === 'sliding_attention').length
    : Math.max(0, numLayers - maxWindowLayers);
  if (numSliding === 0) return null;
  if (numSliding === numLayers) return window;
  throw new PeregrineError(
    'PGN_ERR_UNSUPPORTED_FEATURE',
    `config.json: sliding-window attention on ${numSliding} of ${numLayers} layers (use_sliding_window with max_window_layers/layer_types) is not supported`,
    { field: 'use_sliding_window' },
  );
}

export const qwen2: ModelFamily = {
  name: 'qwen2',
  architectures: ['Qwen2ForCausalLM'],
  defaults: { tieWordEmbeddings: false, maxPositionEmbeddings: 32768 },
  spec(raw, common) {
    const spec = llamaSpec(raw, common);
    return {
      ...spec,
      bias: { qkv: true, o: false, mlp: false, lmHead: false },
      slidingWindow: qwen2SlidingWindow(raw, spec.numLayers),
    };
  },
  weightMap: llamaWeightMap,
};
