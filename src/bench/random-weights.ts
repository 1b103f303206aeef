/**
 * Random weights of a real shape, for benchmarks: N(0, 1/fan_in) matrices, norms near 1.
 * Bytes are produced by tiling a few MB of random values per distinct scale, so an 8B
 * model is generated in seconds (repeated data costs GEMMs and attention nothing).
 */
import type { Backend, Tensor } from '../backends/backend.js';
import type { LayerWeights, ModelWeights } from '../models/model-weights.js';
import type { ModelSpec } from '../models/spec.js';
import { Rng } from '../sampling/rng.js';
import { f32ToBf16 } from '../weights/dtype.js';

const POOL_ELEMS = 3 * 1024 * 1024 + 17; // odd length so rows do not line up with the tile

export function randomModelWeights(spec: ModelSpec, backend: Backend, seed = 0): ModelWeights {
  const rng = new Rng(seed);
  const pools = new Map<string, Uint8Array>();
  const pool = (std: number, mean: number): Uint8Array => {
    const key = `${std}:${mean}`;
    let p = pools.get(key);
    if (!p) {
      p = new Uint8Array(POOL_ELEMS * 2);
      const dv = new DataView(p.buffer);
      for (let i = 0; i < POOL_ELEMS; i++) {
        const u1 = rng.nextFloat() || 1e-12, u2 = rng.nextFloat();
        dv.setUint16(i * 2, f32ToBf16(mean + std * Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2)), true);
      }
      pools.set(key, p);
    }
    return p;
  };
  const make = (shape: number[], std: number, mean = 0): Tensor => {
    const n = shape.reduce((a, b) => a * b, 1);
    const src = pool(std, mean);
    const bytes = new Uint8Array(n * 2);
    for (let off = 0; off < bytes.length; off += src.length) bytes.set(src.subarray(0, Math.min(src.length, bytes.length - off)), off);
    return backend.fromBytes(shape, 'BF16', bytes, backend.activationDtype);
  };
  const H = spec.hiddenSize, F = spec.intermediateSize, hd = spec.headDim;
  const q = spec.numHeads * hd, kv = spec.numKvHeads * hd;
  const layers: LayerWeights[] = [];
  for (let i = 0; i < spec.numLayers; i++) {
    layers.push({
      inputNorm: make([H], 0.05, 1),
      inputNormBias: null,
      qkv: make([q + 2 * kv, H], 1 / Math.sqrt(H)),
      qkvBias: spec.bias.qkv ? make([q + 2 * kv], 0.05) : null,
      o: make([H, q], 1 / Math.sqrt(q)),
      oBias: null,
      postNorm: make([H], 0.05, 1),
      postNormBias: null,
      up: make([(spec.gatedMlp ? 2 : 1) * F, H], 1 / Math.sqrt(H)),
      upBias: null,
      down: make([H, F], 1 / Math.sqrt(F)),
      downBias: null,
    });
  }
  const embed = make([spec.vocabSize, H], 1);
  return {
    embedTokens: embed,
    embedPositions: null,
    norm: make([H], 0.05, 1),
    normBias: null,
    lmHead: spec.tieWordEmbeddings ? embed : make([spec.vocabSize, H], 1 / Math.sqrt(H)),
    lmHeadBias: null,
    layers,
  };
}
