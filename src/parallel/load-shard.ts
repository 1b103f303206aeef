/** config.json + safetensors folder (or a random model's config) -> one tensor-parallel rank's spec and weight shard on a backend. */
import type { Backend } from '../backends/backend.js';
import { randomModelWeights } from '../bench/random-weights.js';
import { PeregrineError } from '../errors.js';
import { loadModelConfig, parseModelConfig } from '../models/config.js';
import { loadModelWeights, type LoadProgress, type ModelWeights } from '../models/model-weights.js';
import { getFamily } from '../models/registry.js';
import type { ModelSpec } from '../models/spec.js';
import { Checkpoint } from '../weights/checkpoint.js';
import { detectQuantizationInDir } from '../weights/quant/index.js';
import { shardOf, shardSpec } from './sharding.js';
import type { ModelSource } from './tp-protocol.js';

export interface LoadedShard {
  /** the model's spec, unsharded */
  readonly spec: ModelSpec;
  /** what this rank's decoder and KV cache run with (shardSpec) */
  readonly rankSpec: ModelSpec;
  readonly weights: ModelWeights;
}

/** The unsharded spec of a source. */
export function sourceSpec(source: ModelSource): ModelSpec {
  return source.kind === 'dir' ? loadModelConfig(source.dir).spec : parseModelConfig(source.config);
}

/** Rank `rank` of `tp` of a checkpoint folder or of a random model. */
export function loadShard(source: ModelSource, backend: Backend, tp: number, rank: number, onProgress?: LoadProgress): LoadedShard {
  if (source.kind === 'dir') return loadModelShard(source.dir, backend, tp, rank, onProgress);
  const spec = parseModelConfig(source.config);
  const rankSpec = shardSpec(spec, tp, rank);
  const weights = randomModelWeights(spec, backend, { seed: source.seed, quantization: source.quantization, tp, rank });
  return { spec, rankSpec, weights };
}

/**
 * Loads rank `rank` of `tp`: every weight cut to the rank's slice as it is read.
 * @throws PeregrineError PGN_ERR_INVALID_ARGUMENT when tp does not split the model,
 *   PGN_ERR_UNSUPPORTED_FEATURE for a quantized layout a rank's split cannot cut (groups across ranks), and the loader's errors
 */
export function loadModelShard(dir: string, backend: Backend, tp: number, rank: number, onProgress?: LoadProgress): LoadedShard {
  const { spec, raw } = loadModelConfig(dir);
  const rankSpec = shardSpec(spec, tp, rank);
  const family = getFamily(spec.architecture);
  const ckpt = Checkpoint.open(dir);
  try {
    const quant = detectQuantizationInDir(dir, raw);
    const weights = loadModelWeights(ckpt, spec, family.weightMap(spec), backend, onProgress, quant, shardOf(spec, tp, rank));
    return { spec, rankSpec, weights };
  } finally {
    ckpt.close();
  }
}
