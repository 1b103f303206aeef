/**
 * Random weights of a real shape, for benchmarks: N(0, 1/fan_in) matrices, norms near 1.
 * Bytes are produced by tiling a few MB of random values per distinct scale, so an 8B
 * model is generated in seconds (repeated data costs GEMMs and attention nothing).
 *
 * Element e (row-major) of a whole weight is pool[e % pool length], so a tensor-parallel rank
 * makes exactly its slice of that weight (sharding.ts's weightShard) and nothing else: the
 * ranks of a group together hold the model tp = 1 makes from the same seed.
 * FP8 (`quantization: 'fp8'`): the layers' linears are E4M3 codes with one scale per tensor
 * and dynamic per-token activation scales (what `peregrine build --quantization fp8` makes).
 * INT8 / INT4 ('int8', 'int4'): uniform random codes, weight-only, per-channel scales (INT8) or
 * symmetric groups of 128 (INT4, GPTQ's layout), scaled to the same standard deviation.
 */
import type { Backend, QuantizedWeight, Tensor } from '../backends/backend.js';
import type { LayerWeights, LinearWeight, ModelWeights, WeightShard } from '../models/model-weights.js';
import type { GlobalWeight, LayerWeight, ModelSpec } from '../models/spec.js';
import { weightShard } from '../parallel/sharding.js';
import { Rng } from '../sampling/rng.js';
import { f32ToBf16 } from '../weights/dtype.js';
import { encodeE4M3 } from '../weights/quant/fp8.js';

const MAX_POOL_ELEMS = 3 * 1024 * 1024;
/** added to the pool length so rows do not line up with the tile */
const POOL_SKEW = 17;
/** E4M3 codes are drawn as N(0, FP8_CODE_STD): amax about 5 sigma stays under E4M3's 448 */
const FP8_CODE_STD = 64;
/** root mean square of a uniform random int8 code, and of (q - 8) for a uniform int4 code */
const INT8_CODE_RMS = Math.sqrt((2 * 128 ** 3 + 128) / 3 / 256);
const INT4_CODE_RMS = Math.sqrt(21.5);
const INT4_GROUP = 128;

export type RandomQuantization = 'fp8' | 'int8' | 'int4' | null;

export interface RandomWeightsOptions {
  readonly seed?: number;
  /** 'fp8': the layers' linears as E4M3 with a per-tensor scale; null (default): the backend's activation dtype */
  readonly quantization?: RandomQuantization;
  /** tensor parallel: the shard of rank `rank` of `tp` (default 1 and 0: the whole model) */
  readonly tp?: number;
  readonly rank?: number;
}

/** [start, end) element runs of a row-major [rows, cols] tensor that `shard` keeps, in order. */
function runsOf(shape: readonly number[], shard: WeightShard): [number, number][] {
  const rows = shape[0]!, cols = shape.length > 1 ? shape[1]! : 1;
  if (shard === 'all') return [[0, rows * cols]];
  if (shard === 'none') return [];
  if (shard.dim === 0) return shard.ranges.map(([a, b]) => [a * cols, b * cols]);
  const runs: [number, number][] = [];
  for (let r = 0; r < rows; r++) for (const [a, b] of shard.ranges) runs.push([r * cols + a, r * cols + b]);
  return runs;
}

function shardShape(shape: readonly number[], shard: WeightShard): number[] {
  if (shard === 'all' || shard === 'none') return [...shape];
  const out = [...shape];
  out[shard.dim] = shard.ranges.reduce((n, [a, b]) => n + b - a, 0);
  return out;
}

/** Copies elements [start, end) of the endless tiling of `pool` (elemBytes each) to dst at dstElem. */
function copyTiled(dst: Uint8Array, dstElem: number, pool: Uint8Array, elemBytes: number, start: number, end: number): number {
  const poolElems = pool.length / elemBytes;
  let e = start;
  let at = dstElem * elemBytes;
  while (e < end) {
    const p = e % poolElems;
    const n = Math.min(end - e, poolElems - p);
    dst.set(pool.subarray(p * elemBytes, (p + n) * elemBytes), at);
    at += n * elemBytes;
    e += n;
  }
  return dstElem + (end - start);
}

/**
 * The model of `spec` (the whole, unsharded spec) with random weights on `backend`; with
 * tp > 1 only rank `rank`'s shard, to run with shardSpec(spec, tp, rank).
 */
export function randomModelWeights(spec: ModelSpec, backend: Backend, seedOrOptions: number | RandomWeightsOptions = 0): ModelWeights {
  const o = typeof seedOrOptions === 'number' ? { seed: seedOrOptions } : seedOrOptions;
  const tp = o.tp ?? 1, rank = o.rank ?? 0;
  const rng = new Rng(o.seed ?? 0);
  const normal = () => {
    const u1 = rng.nextFloat() || 1e-12, u2 = rng.nextFloat();
    return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  };
  const H = spec.hiddenSize, F = spec.intermediateSize, hd = spec.headDim, V = spec.vocabSize;
  const q = spec.numHeads * hd, kv = spec.numKvHeads * hd;
  // small models get small pools; the length depends on the whole model only, so every rank tiles alike
  const poolElems = Math.min(MAX_POOL_ELEMS, Math.max(V, q + 2 * kv, 2 * F) * H) + POOL_SKEW;
  const pools = new Map<string, Uint8Array>();
  /** 'fp8': E4M3 codes; else `${std}:${mean}`: bf16 values of that normal distribution */
  const pool = (name: string): Uint8Array => {
    let p = pools.get(name);
    if (p) return p;
    if (name === 'fp8') {
      p = new Uint8Array(poolElems);
      for (let i = 0; i < poolElems; i++) p[i] = encodeE4M3(FP8_CODE_STD * normal());
    } else if (name === 'bytes') {
      p = new Uint8Array(poolElems);
      for (let i = 0; i < poolElems; i++) p[i] = Math.floor(rng.nextFloat() * 256);
    } else {
      const [std, mean] = name.split(':').map(Number) as [number, number];
      p = new Uint8Array(poolElems * 2);
      const dv = new DataView(p.buffer);
      for (let i = 0; i < poolElems; i++) dv.setUint16(i * 2, f32ToBf16(mean + std * normal()), true);
    }
    pools.set(name, p);
    return p;
  };
  // every layer's weight of one name holds the same bytes: made once, uploaded numLayers times
  const made = new Map<string, { shape: number[]; bytes: Uint8Array }>();
  const gather = (shape: readonly number[], shard: WeightShard, poolName: string): { shape: number[]; bytes: Uint8Array } => {
    const key = `${shape.join('x')}|${JSON.stringify(shard)}|${poolName}`;
    const hit = made.get(key);
    if (hit) return hit;
    const src = pool(poolName);
    const elemBytes = poolName === 'fp8' || poolName === 'bytes' ? 1 : 2;
    const out = shardShape(shape, shard);
    const bytes = new Uint8Array(out.reduce((a, b) => a * b, 1) * elemBytes);
    let at = 0;
    for (const [a, b] of runsOf(shape, shard)) at = copyTiled(bytes, at, src, elemBytes, a, b);
    made.set(key, { shape: out, bytes });
    return { shape: out, bytes };
  };
  const dense = (key: GlobalWeight | LayerWeight, shape: number[], std: number, mean = 0): Tensor => {
    const g = gather(shape, weightShard(key, spec, tp, rank), `${std}:${mean}`);
    return backend.fromBytes(g.shape, 'BF16', g.bytes, backend.activationDtype);
  };
  const linear = (key: LayerWeight, shape: [number, number], std: number): LinearWeight => {
    if (o.quantization === 'int8' || o.quantization === 'int4') return intLinear(o.quantization, weightShard(key, spec, tp, rank), shape, std);
    if (o.quantization !== 'fp8') return dense(key, shape, std);
    const g = gather(shape, weightShard(key, spec, tp, rank), 'fp8');
    const [N, K] = g.shape as [number, number];
    const w: QuantizedWeight = {
      kind: 'fp8',
      shape: [N, K],
      groupSize: K,
      qweight: backend.fromBytes([N, K / 4], 'I32', g.bytes, 'i32'),
      scales: backend.fromF32([1], Float32Array.of(std / FP8_CODE_STD), 'f32'),
      zeros: null,
      inputScale: null,
    };
    return w;
  };
  /** codes as the bytes of [N, K] (int8) or [N, K / 2] (int4, two nibbles a byte), so a K shard maps to bytes */
  const intLinear = (kind: 'int8' | 'int4', shard: WeightShard, [N, K]: [number, number], std: number): QuantizedWeight => {
    const perByte = kind === 'int4' ? 2 : 1;
    const byteShard: WeightShard = typeof shard === 'object' && shard.dim === 1 ? { ...shard, ranges: shard.ranges.map(([a, b]) => [a / perByte, b / perByte] as [number, number]) } : shard;
    const g = gather([N, K / perByte], byteShard, 'bytes');
    const [n, k] = [g.shape[0]!, g.shape[1]! * perByte];
    const groupSize = kind === 'int4' ? INT4_GROUP : k;
    const numGroups = Math.ceil(k / groupSize);
    const scale = std / (kind === 'int4' ? INT4_CODE_RMS : INT8_CODE_RMS);
    return {
      kind, shape: [n, k], groupSize,
      qweight: backend.fromBytes([n, k / (4 * perByte)], 'I32', g.bytes, 'i32'),
      scales: backend.fromF32([n, numGroups], new Float32Array(n * numGroups).fill(scale), 'f32'),
      zeros: null,
      inputScale: null,
    };
  };
  const layers: LayerWeights[] = [];
  for (let i = 0; i < spec.numLayers; i++) {
    layers.push({
      inputNorm: dense('input_layernorm.weight', [H], 0.05, 1),
      inputNormBias: null,
      qkv: linear('self_attn.qkv_proj.weight', [q + 2 * kv, H], 1 / Math.sqrt(H)),
      qkvBias: spec.bias.qkv ? dense('self_attn.qkv_proj.bias', [q + 2 * kv], 0.05) : null,
      o: linear('self_attn.o_proj.weight', [H, q], 1 / Math.sqrt(q)),
      oBias: null,
      postNorm: dense('post_attention_layernorm.weight', [H], 0.05, 1),
      postNormBias: null,
      up: linear(spec.gatedMlp ? 'mlp.gate_up_proj.weight' : 'mlp.up_proj.weight', [(spec.gatedMlp ? 2 : 1) * F, H], 1 / Math.sqrt(H)),
      upBias: null,
      down: linear('mlp.down_proj.weight', [H, F], 1 / Math.sqrt(F)),
      downBias: null,
    });
  }
  const embed = dense('embed_tokens.weight', [V, H], 1);
  return {
    embedTokens: embed,
    embedPositions: null,
    norm: dense('norm.weight', [H], 0.05, 1),
    normBias: null,
    lmHead: spec.tieWordEmbeddings ? embed : dense('lm_head.weight', [V, H], 1 / Math.sqrt(H)),
    lmHeadBias: null,
    layers,
  };
}
