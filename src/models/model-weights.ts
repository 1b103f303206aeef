/**
 * Loads a checkpoint's tensors onto a backend under the canonical names of the
 * generic decoder, following a family's WeightMap (packed q|k|v and gate|up are
 * concatenated along dim 0 as they are read).
 */
import type { Backend, Tensor } from '../backends/backend.js';
import { PeregrineError } from '../errors.js';
import type { Checkpoint } from '../weights/checkpoint.js';
import type { GlobalWeight, LayerWeight, ModelSpec, WeightMap } from './spec.js';

export interface LayerWeights {
  readonly inputNorm: Tensor;
  readonly inputNormBias: Tensor | null;
  readonly qkv: Tensor;
  readonly qkvBias: Tensor | null;
  readonly o: Tensor;
  readonly oBias: Tensor | null;
  /** absent in parallel-residual families that share one norm */
  readonly postNorm: Tensor | null;
  readonly postNormBias: Tensor | null;
  /** gate|up when spec.gatedMlp, else the up projection */
  readonly up: Tensor;
  readonly upBias: Tensor | null;
  readonly down: Tensor;
  readonly downBias: Tensor | null;
}

export interface ModelWeights {
  readonly embedTokens: Tensor;
  readonly embedPositions: Tensor | null;
  readonly norm: Tensor;
  readonly normBias: Tensor | null;
  /** the embedding table itself when embeddings are tied */
  readonly lmHead: Tensor;
  readonly lmHeadBias: Tensor | null;
  readonly layers: readonly LayerWeights[];
}

export type LoadProgress = (loaded: number, total: number) => void;

/** Reads every weight the spec needs; a tensor missing from the checkpoint is PGN_ERR_WEIGHTS_MISSING_TENSOR. */
export function loadModelWeights(ckpt: Checkpoint, spec: ModelSpec, map: WeightMap, backend: Backend, onProgress?: LoadProgress): ModelWeights {
  const dtype = backend.activationDtype;
  const total = 4 + spec.numLayers * 12;
  let loaded = 0;
  const load = (names: string | readonly string[]): Tensor => {
    const raw = typeof names === 'string' ? ckpt.read(names) : ckpt.readConcat(names);
    onProgress?.(++loaded, total);
    return backend.fromBytes(raw.shape, raw.dtype, raw.bytes, dtype);
  };
  const names = (entry: string | readonly string[] | undefined, layer: number): string | readonly string[] | undefined => {
    if (entry === undefined) return undefined;
    const sub = (s: string) => s.replaceAll('{i}', String(layer));
    return typeof entry === 'string' ? sub(entry) : entry.map(sub);
  };
  const exists = (n: string | readonly string[]) => (typeof n === 'string' ? ckpt.has(n) : n.every((x) => ckpt.has(x)));

  const global = (key: GlobalWeight, required: boolean): Tensor | null => {
    const n = map.global[key];
    if (n === undefined || (!required && !exists(n))) {
      if (required) throw missing(key);
      return null;
    }
    return load(n);
  };
  const layerW = (i: number, key: LayerWeight, required: boolean): Tensor | null => {
    const n = names(map.layer[key], i);
    if (n === undefined || (!required && !exists(n))) {
      if (required) throw missing(`layers.${i}.${key}`);
      return null;
    }
    return load(n);
  };

  const embedTokens = global('embed_tokens.weight', true)!;
  const lmHeadNames = map.global['lm_head.weight'];
  const tied = spec.tieWordEmbeddings || lmHeadNames === undefined || !exists(lmHeadNames);
  const isLayerNorm = spec.norm.type === 'layer';
  const layers: LayerWeights[] = [];
  for (let i = 0; i < spec.numLayers; i++) {
    const gated = spec.gatedMlp;
    layers.push({
      inputNorm: layerW(i, 'input_layernorm.weight', true)!,
      inputNormBias: isLayerNorm ? layerW(i, 'input_layernorm.bias', false) : null,
      qkv: layerW(i, 'self_attn.qkv_proj.weight', true)!,
      qkvBias: spec.bias.qkv ? layerW(i, 'self_attn.qkv_proj.bias', true) : null,
      o: layerW(i, 'self_attn.o_proj.weight', true)!,
      oBias: spec.bias.o ? layerW(i, 'self_attn.o_proj.bias', true) : null,
      postNorm: layerW(i, 'post_attention_layernorm.weight', !spec.parallelResidual),
      postNormBias: isLayerNorm ? layerW(i, 'post_attention_layernorm.bias', false) : null,
      up: layerW(i, gated ? 'mlp.gate_up_proj.weight' : 'mlp.up_proj.weight', true)!,
      upBias: spec.bias.mlp ? layerW(i, gated ? 'mlp.gate_up_proj.bias' : 'mlp.up_proj.bias', true) : null,
      down: layerW(i, 'mlp.down_proj.weight', true)!,
      downBias: spec.bias.mlp ? layerW(i, 'mlp.down_proj.bias', true) : null,
    });
  }
  return {
    embedTokens,
    embedPositions: spec.positional === 'learned' ? global('embed_positions.weight', true) : null,
    norm: global('norm.weight', true)!,
    normBias: isLayerNorm ? global('norm.bias', false) : null,
    lmHead: tied ? embedTokens : global('lm_head.weight', true)!,
    lmHeadBias: spec.bias.lmHead ? global('lm_head.bias', true) : null,
    layers,
  };
}

function missing(name: string): PeregrineError {
  return new PeregrineError('PGN_ERR_WEIGHTS_MISSING_TENSOR', `the weight map names no tensor for "${name}"`, { tensor: name });
}

/** Every tensor a ModelWeights holds, each once (tied heads are not freed twice). */
export function allTensors(w: ModelWeights): Tensor[] {
  const set = new Set<Tensor>([w.embedTokens, w.norm, w.lmHead]);
  for (const t of [w.embedPositions, w.normBias, w.lmHeadBias]) if (t) set.add(t);
  for (const l of w.layers) for (const t of Object.values(l)) if (t) set.add(t as Tensor);
  return [...set];
}
