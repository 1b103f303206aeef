/**
 * The paged KV pool on a backend: one K and one V tensor per layer, of the activation dtype
 * ('auto') or E4M3 bytes ('fp8', half the bytes of bf16 and so twice the blocks for a budget;
 * see LayerKvCache for the layout and the per-layer scales).
 */
import { bytesPerElement, type Backend, type KvCacheDType, type LayerKvCache } from '../backends/backend.js';
import { PeregrineError } from '../errors.js';
import type { ModelSpec } from '../models/spec.js';
import type { KvLayerScales } from '../weights/quant/kv-scales.js';

export type { KvLayerScales };

export const DEFAULT_BLOCK_SIZE = 16;
export const KV_CACHE_DTYPES: readonly KvCacheDType[] = ['auto', 'fp8'];
/** vLLM's spelling of the same format */
const KV_CACHE_DTYPE_ALIASES: Readonly<Record<string, KvCacheDType>> = { fp8_e4m3: 'fp8' };
/** E4M3 codes travel as i32 words of 4 */
const FP8_PER_WORD = 4;

export interface KvCacheOptions {
  /** default 'auto' */
  readonly dtype?: KvCacheDType;
  /** fp8: one entry a layer (from the checkpoint, readKvCacheScales); absent or null = 1.0 everywhere */
  readonly scales?: readonly KvLayerScales[] | null;
}

/**
 * `--kv-cache-dtype` / LLMOptions.kvCacheDtype as a KvCacheDType (undefined -> 'auto').
 * @throws PeregrineError PGN_ERR_INVALID_ARGUMENT naming the accepted values
 */
export function parseKvCacheDtype(value: string | undefined): KvCacheDType {
  if (value === undefined) return 'auto';
  const v = value.trim().toLowerCase();
  const dtype = (KV_CACHE_DTYPES as readonly string[]).includes(v) ? (v as KvCacheDType) : KV_CACHE_DTYPE_ALIASES[v];
  if (dtype === undefined) {
    throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `unknown KV cache dtype "${value}" (supported: ${KV_CACHE_DTYPES.join(', ')}; fp8 is E4M3, also spelled fp8_e4m3)`, { param: 'kv_cache_dtype', value });
  }
  return dtype;
}

/** bytes of one cached element */
export function kvCacheBytesPerElement(dtype: KvCacheDType, backend: Backend): number {
  return dtype === 'fp8' ? 1 : bytesPerElement(backend.activationDtype);
}

export class KvCachePool {
  readonly layers: LayerKvCache[] = [];
  readonly dtype: KvCacheDType;

  constructor(
    private readonly backend: Backend,
    spec: ModelSpec,
    readonly numBlocks: number,
    readonly blockSize: number,
    options: KvCacheOptions = {},
  ) {
    this.dtype = options.dtype ?? 'auto';
    const rows = numBlocks * blockSize;
    const width = spec.numKvHeads * spec.headDim;
    if (this.dtype === 'auto') {
      for (let i = 0; i < spec.numLayers; i++) {
        this.layers.push({ k: backend.empty([rows, width], backend.activationDtype), v: backend.empty([rows, width], backend.activationDtype) });
      }
      return;
    }
    if (width % FP8_PER_WORD !== 0) {
      throw new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', `the fp8 KV cache needs numKvHeads * headDim to be a multiple of ${FP8_PER_WORD}, got ${spec.numKvHeads} * ${spec.headDim}`, { numKvHeads: spec.numKvHeads, headDim: spec.headDim });
    }
    const scales = options.scales ?? null;
    if (scales && scales.length !== spec.numLayers) {
      throw new PeregrineError('PGN_ERR_INTERNAL', `KV cache scales for ${scales.length} layers, the model has ${spec.numLayers}`, { numScales: scales.length, numLayers: spec.numLayers });
    }
    for (let i = 0; i < spec.numLayers; i++) {
      const s = scales?.[i] ?? { kScale: 1, vScale: 1 };
      this.layers.push({
        k: backend.empty([rows, width / FP8_PER_WORD], 'i32'),
        v: backend.empty([rows, width / FP8_PER_WORD], 'i32'),
        dtype: 'fp8',
        kScale: s.kScale,
        vScale: s.vScale,
      });
    }
  }

  /** bytes one block takes across all layers (K and V) */
  static bytesPerBlock(spec: ModelSpec, blockSize: number, backend: Backend, dtype: KvCacheDType = 'auto'): number {
    return 2 * spec.numLayers * blockSize * spec.numKvHeads * spec.headDim * kvCacheBytesPerElement(dtype, backend);
  }

  dispose(): void {
    for (const l of this.layers) {
      this.backend.free(l.k);
      this.backend.free(l.v);
    }
    this.layers.length = 0;
  }
}
