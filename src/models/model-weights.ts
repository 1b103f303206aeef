/**
 * Loads a checkpoint's tensors onto a backend under the canonical names of the
 * generic decoder, following a family's WeightMap: packed q|k|v and gate|up are
 * concatenated along dim 0 as they are read, load-time transforms (transposed Conv1D,
 * per-head fused QKV, ...) are applied to the raw bytes, and a name missing from the
 * checkpoint is tried without the base model prefix, then in the entry's fallback layout.
 * Under tensor parallelism each weight is cut to the rank's shard (`ShardOf`) as it is read.
 */
import { isQuantizedWeight, type Backend, type QuantizedWeight, type Tensor } from '../backends/backend.js';
import { PeregrineError } from '../errors.js';
import type { Checkpoint } from '../weights/checkpoint.js';
import type { RawTensor } from '../weights/safetensors.js';
import type { GlobalWeight, LayerWeight, ModelSpec, WeightEntry, WeightMap, WeightSource, WeightTransform } from './spec.js';
import { applyWeightTransforms, sliceTensor, type TensorSlice } from './weight-transform.js';
import { linearWeightExists, readQuantizedLinear, uploadQuantWeight } from '../weights/quant/load.js';
import { sliceQuantWeight } from '../weights/quant/slice.js';
import { dequantize as dequantizeWeight } from '../weights/quant/dequantize.js';
import type { QuantConfig } from '../weights/quant/index.js';

/** A linear layer's weight: plain, or quantized (FP8 / INT8 / INT4) when the checkpoint stores it so. */
export type LinearWeight = Tensor | QuantizedWeight;

export interface LayerWeights {
  readonly inputNorm: Tensor;
  readonly inputNormBias: Tensor | null;
  readonly qkv: LinearWeight;
  readonly qkvBias: Tensor | null;
  readonly o: LinearWeight;
  readonly oBias: Tensor | null;
  /** the MLP's input norm; in parallel-residual families, absent when one norm feeds both blocks */
  readonly postNorm: Tensor | null;
  readonly postNormBias: Tensor | null;
  /** gate|up when spec.gatedMlp, else the up projection; MoE: every expert's gate|up [E, 2I, H] (never quantized) */
  readonly up: LinearWeight;
  readonly upBias: Tensor | null;
  /** MoE: every expert's down projection [E, H, I] (never quantized) */
  readonly down: LinearWeight;
  readonly downBias: Tensor | null;
  /** spec.qkNorm: RMSNorm weights [headDim] of the q and k heads */
  readonly qNorm?: Tensor | null;
  readonly kNorm?: Tensor | null;
  /** spec.sandwichNorms: norms on the attention / MLP outputs */
  readonly attnOutNorm?: Tensor | null;
  readonly mlpOutNorm?: Tensor | null;
  /** spec.moe: router [numExperts, hidden] */
  readonly router?: Tensor | null;
}

export interface ModelWeights {
  readonly embedTokens: Tensor;
  readonly embedPositions: Tensor | null;
  /** spec.embeddingNorm */
  readonly embedNorm?: Tensor | null;
  readonly embedNormBias?: Tensor | null;
  /** spec.wordEmbedDim != hiddenSize: [hidden, wordEmbedDim] and [wordEmbedDim, hidden] */
  readonly projectIn?: Tensor | null;
  readonly projectOut?: Tensor | null;
  /** null with post-norm layers (no final norm) */
  readonly norm: Tensor | null;
  readonly normBias: Tensor | null;
  /** the embedding table itself when embeddings are tied */
  readonly lmHead: LinearWeight;
  readonly lmHeadBias: Tensor | null;
  readonly layers: readonly LayerWeights[];
}

export type LoadProgress = (loaded: number, total: number) => void;

/** What a rank keeps of one weight: a slice, all of it, or nothing (row-parallel biases live on rank 0 only). */
export type WeightShard = TensorSlice | 'all' | 'none';
/** The rank's shard of each canonical weight (src/parallel/sharding.ts). */
export type ShardOf = (key: GlobalWeight | LayerWeight) => WeightShard;

/** A resolved entry: checkpoint names that exist, and the transforms to apply. */
interface Resolved {
  readonly names: readonly string[];
  readonly concat: boolean;
  readonly transforms: readonly WeightTransform[];
}

/**
 * Reads every weight the spec needs; a tensor missing from the checkpoint is PGN_ERR_WEIGHTS_MISSING_TENSOR.
 * @param quant the checkpoint's quantization (detectQuantizationInDir): its linear layers load as QuantizedWeights
 * @param shardOf tensor parallelism: the slice of each weight this rank holds (default: every weight whole)
 */
export function loadModelWeights(
  ckpt: Checkpoint, spec: ModelSpec, map: WeightMap, backend: Backend, onProgress?: LoadProgress, quant: QuantConfig | null = null,
  shardOf: ShardOf = () => 'all',
): ModelWeights {
  const dtype = backend.activationDtype;
  let total = Object.keys(map.global).length + spec.numLayers * Object.keys(map.layer).length;
  let loaded = 0;

  /** the names as given, or without the base prefix when only that form is in the checkpoint */
  const has = (n: string) => linearWeightExists(ckpt, n, quant);
  const present = (n: string): string | null => {
    if (has(n)) return n;
    const p = map.basePrefix === undefined ? '' : `${map.basePrefix}.`;
    return p && n.startsWith(p) && has(n.slice(p.length)) ? n.slice(p.length) : null;
  };
  const resolve = (entry: WeightEntry, layer: number): Resolved | null => {
    const src = asSource(entry);
    const names = namesOf(src, layer).map(present);
    if (names.every((n) => n !== null)) return { names: names as string[], concat: typeof src.names !== 'string', transforms: src.transforms ?? [] };
    return src.fallback === undefined ? null : resolve(src.fallback, layer);
  };
  /** the first name of the entry's main layout that the checkpoint lacks, for the error message */
  const firstMissing = (entry: WeightEntry, layer: number): string => {
    const names = namesOf(asSource(entry), layer);
    return names.find((n) => present(n) === null) ?? names[0]!;
  };
  /** the entry's tensors as stored; with `dequantize`, quantized modules (MoE experts: not linears) dequantized to f32 */
  const readStored = (r: Resolved, dequantize: boolean): RawTensor => {
    const host = dequantize && quant ? readQuantizedLinear(ckpt, r.concat ? r.names : r.names[0]!, quant) : null;
    if (host) {
      const f = dequantizeWeight(host);
      return { name: r.names.join('|'), dtype: 'F32', shape: [...host.shape], bytes: new Uint8Array(f.buffer, f.byteOffset, f.byteLength) };
    }
    return r.concat ? ckpt.readConcat(r.names) : ckpt.read(r.names[0]!);
  };
  const read = (r: Resolved, shard: WeightShard, dequantize: boolean): RawTensor => {
    const raw = applyWeightTransforms(readStored(r, dequantize), r.transforms);
    return shard === 'all' ? raw : sliceTensor(raw, shard as TensorSlice);
  };
  const fetch = (key: string, entry: WeightEntry | undefined, layer: number, required: boolean, linear: boolean, shard: WeightShard): LinearWeight | null => {
    if (shard === 'none') return null;
    if (entry === undefined) {
      if (required) throw unmapped(key);
      return null;
    }
    const r = resolve(entry, layer);
    if (r === null) {
      if (required) ckpt.info(firstMissing(entry, layer)); // throws the checkpoint's missing-tensor error (file, near matches)
      return null;
    }
    onProgress?.(loaded + 1, total);
    loaded++;
    if (linear && quant) {
      // stored quantized: kept so; a tensor-parallel rank takes its rows (column-parallel) or whole groups of columns (row-parallel)
      const host = readQuantizedLinear(ckpt, r.concat ? r.names : r.names[0]!, quant, r.transforms);
      if (host) return uploadQuantWeight(shard === 'all' ? host : sliceQuantWeight(host, shard as TensorSlice, key), backend);
    }
    const raw = read(r, shard, !linear);
    return backend.fromBytes(raw.shape, raw.dtype, raw.bytes, dtype);
  };
  const global = (key: GlobalWeight, required: boolean): Tensor | null => fetch(key, map.global[key], 0, required, false, shardOf(key)) as Tensor | null;
  const layerW = (i: number, key: LayerWeight, required: boolean): Tensor | null => fetch(`layers.${i}.${key}`, map.layer[key], i, required, false, shardOf(key)) as Tensor | null;
  const linearW = (i: number, key: LayerWeight): LinearWeight => fetch(`layers.${i}.${key}`, map.layer[key], i, true, true, shardOf(key))!;

  const embedTokens = global('embed_tokens.weight', true)!;
  const lmHeadEntry = map.global['lm_head.weight'];
  const tied = spec.tieWordEmbeddings || lmHeadEntry === undefined || resolve(lmHeadEntry, 0) === null;
  const headShard = shardOf('lm_head.weight');
  // a tied table is read once when the embedding and the head hold the same slice (always, with vocab-parallel sharding)
  const shareTable = tied && sameShard(headShard, shardOf('embed_tokens.weight'));
  if (tied && !shareTable) total++;
  const isLayerNorm = spec.norm.type === 'layer';
  const layers: LayerWeights[] = [];
  for (let i = 0; i < spec.numLayers; i++) {
    const gated = spec.gatedMlp || spec.moe !== null;
    const mlpBias = spec.bias.mlp && spec.moe === null;
    layers.push({
      inputNorm: layerW(i, 'input_layernorm.weight', true)!,
      inputNormBias: isLayerNorm ? layerW(i, 'input_layernorm.bias', false) : null,
      qkv: linearW(i, 'self_attn.qkv_proj.weight'),
      qkvBias: spec.bias.qkv ? layerW(i, 'self_attn.qkv_proj.bias', true) : null,
      o: linearW(i, 'self_attn.o_proj.weight'),
      oBias: spec.bias.o ? layerW(i, 'self_attn.o_proj.bias', true) : null,
      postNorm: layerW(i, 'post_attention_layernorm.weight', !spec.parallelResidual),
      postNormBias: isLayerNorm ? layerW(i, 'post_attention_layernorm.bias', false) : null,
      up: spec.moe ? layerW(i, 'mlp.gate_up_proj.weight', true)! : linearW(i, gated ? 'mlp.gate_up_proj.weight' : 'mlp.up_proj.weight'),
      upBias: mlpBias ? layerW(i, gated ? 'mlp.gate_up_proj.bias' : 'mlp.up_proj.bias', true) : null,
      down: spec.moe ? layerW(i, 'mlp.down_proj.weight', true)! : linearW(i, 'mlp.down_proj.weight'),
      downBias: mlpBias ? layerW(i, 'mlp.down_proj.bias', true) : null,
      qNorm: spec.qkNorm ? layerW(i, 'self_attn.q_norm.weight', true) : null,
      kNorm: spec.qkNorm ? layerW(i, 'self_attn.k_norm.weight', true) : null,
      attnOutNorm: spec.sandwichNorms ? layerW(i, 'attn_output_layernorm.weight', true) : null,
      mlpOutNorm: spec.sandwichNorms ? layerW(i, 'mlp_output_layernorm.weight', true) : null,
      router: spec.moe ? layerW(i, 'mlp.router.weight', true) : null,
    });
  }
  const projected = spec.wordEmbedDim !== spec.hiddenSize;
  const finalNorm = spec.normPlacement === 'pre';
  const weights: ModelWeights = {
    embedTokens,
    embedPositions: spec.positional === 'learned' ? global('embed_positions.weight', true) : null,
    embedNorm: spec.embeddingNorm ? global('embed_layernorm.weight', true) : null,
    embedNormBias: spec.embeddingNorm ? global('embed_layernorm.bias', false) : null,
    projectIn: projected ? global('project_in.weight', true) : null,
    projectOut: projected ? global('project_out.weight', true) : null,
    norm: finalNorm ? global('norm.weight', true) : null,
    normBias: finalNorm && isLayerNorm ? global('norm.bias', false) : null,
    lmHead: shareTable ? embedTokens : fetch('lm_head.weight', tied ? map.global['embed_tokens.weight'] : lmHeadEntry, 0, true, !tied, headShard)!,
    lmHeadBias: spec.bias.lmHead ? global('lm_head.bias', true) : null,
    layers,
  };
  onProgress?.(total, total);
  return weights;
}

function sameShard(a: WeightShard, b: WeightShard): boolean {
  return typeof a === 'string' || typeof b === 'string' ? a === b : a.dim === b.dim && JSON.stringify(a.ranges) === JSON.stringify(b.ranges);
}

function asSource(entry: WeightEntry): WeightSource {
  return typeof entry === 'string' || Array.isArray(entry) ? { names: entry as string | readonly string[] } : (entry as WeightSource);
}

/** the source's tensor names for layer `layer` */
function namesOf(src: WeightSource, layer: number): string[] {
  const sub = (n: string) => n.replaceAll('{i}', String(layer));
  return typeof src.names === 'string' ? [sub(src.names)] : src.names.map(sub);
}

function unmapped(name: string): PeregrineError {
  return new PeregrineError('PGN_ERR_WEIGHTS_MISSING_TENSOR', `the weight map names no tensor for "${name}"`, { tensor: name });
}

/** Every tensor a ModelWeights holds, each once (tied heads are not freed twice; quantized weights give their parts). */
export function allTensors(w: ModelWeights): Tensor[] {
  const set = new Set<Tensor>();
  const add = (t: LinearWeight | null | undefined) => {
    if (!t) return;
    if (isQuantizedWeight(t)) {
      for (const p of [t.qweight, t.scales, t.zeros, t.inputScale]) if (p) set.add(p);
    } else set.add(t);
  };
  for (const t of [w.embedTokens, w.lmHead, w.embedPositions, w.embedNorm, w.embedNormBias, w.projectIn, w.projectOut, w.norm, w.normBias, w.lmHeadBias]) add(t);
  for (const l of w.layers) for (const t of Object.values(l)) add(t as LinearWeight | null);
  return [...set];
}
