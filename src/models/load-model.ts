/** config.json + safetensors folder -> spec and weights on a backend. */
import type { Backend } from '../backends/backend.js';
import { Checkpoint } from '../weights/checkpoint.js';
import { loadModelConfig, type HfConfig } from './config.js';
import { getFamily } from './registry.js';
import { loadModelWeights, type LoadProgress, type ModelWeights } from './model-weights.js';
import type { ModelSpec } from './spec.js';
import { detectQuantizationInDir, type QuantConfig } from '../weights/quant/index.js';

export interface LoadedModel {
  readonly dir: string;
  readonly spec: ModelSpec;
  readonly raw: HfConfig;
  readonly weights: ModelWeights;
  /** the checkpoint's quantization, null for a plain checkpoint */
  readonly quant: QuantConfig | null;
}

export function loadModel(dir: string, backend: Backend, onProgress?: LoadProgress): LoadedModel {
  const { spec, raw } = loadModelConfig(dir);
  const family = getFamily(spec.architecture);
  const ckpt = Checkpoint.open(dir);
  try {
    const quant = detectQuantizationInDir(dir, raw);
    const weights = loadModelWeights(ckpt, spec, family.weightMap(spec), backend, onProgress, quant);
    return { dir, spec, raw, weights, quant };
  } finally {
    ckpt.close();
  }
}
