/**
 * FP8 KV-cache scales of pre-quantized checkpoints (the rename table of their names, as vLLM's
 * maybe_remap_kv_scale_name reads them). Per layer, per-tensor f32 scales of K and V under:
 *   <layer>.self_attn.k_scale / v_scale                compressed-tensors, ModelOpt (current)
 *   <layer>.self_attn.k_proj.k_scale / v_proj.v_scale  ModelOpt (older exports)
 *   <layer>.self_attn.k_proj.output_scale / v_proj...  compressed-tensors (older exports)
 *   <layer>.self_attn.kv_scale                         deprecated: one scale for both K and V
 * The layer is the first `.<n>.` of the name (model.layers.3..., transformer.h.3...). A scale of
 * several elements (per head) is reduced to its max, the scale that clips none of them. Layers
 * without a scale keep 1.0, vLLM's default without calibration.
 */
import { PeregrineError } from '../../errors.js';
import { Checkpoint } from '../checkpoint.js';

/** Per-tensor scales of one layer's K and V (x = code * scale). */
export interface KvLayerScales {
  readonly kScale: number;
  readonly vScale: number;
}

type Which = 'k' | 'v' | 'kv';
/** suffix -> what it scales and its rank (a lower rank wins when a layer has several spellings) */
const SUFFIXES: readonly (readonly [string, Which, number])[] = [
  ['.k_proj.k_scale', 'k', 0], ['.v_proj.v_scale', 'v', 0],
  ['.k_scale', 'k', 0], ['.v_scale', 'v', 0],
  ['.k_proj.output_scale', 'k', 1], ['.v_proj.output_scale', 'v', 1],
  ['.kv_scale', 'kv', 2],
];
const LAYER_INDEX = /\.(\d+)\./;

/** The KV scale tensors a checkpoint holds, by layer; empty when it has none. */
export function findKvScaleTensors(names: readonly string[]): Map<number, { k?: string; v?: string; kRank: number; vRank: number }> {
  const found = new Map<number, { k?: string; v?: string; kRank: number; vRank: number }>();
  for (const name of names) {
    const hit = SUFFIXES.find(([s]) => name.endsWith(s));
    if (!hit) continue;
    const m = LAYER_INDEX.exec(name);
    if (!m) continue;
    const layer = Number(m[1]);
    const [, which, rank] = hit;
    const e = found.get(layer) ?? { kRank: Infinity, vRank: Infinity };
    if (which !== 'v' && rank < e.kRank) { e.k = name; e.kRank = rank; }
    if (which !== 'k' && rank < e.vRank) { e.v = name; e.vRank = rank; }
    found.set(layer, e);
  }
  return found;
}

/**
 * Per-layer K/V scales from the checkpoint, or null when it holds none (scales then default to 1).
 * @throws PeregrineError PGN_ERR_INVALID_ARGUMENT for a scale that is empty, not finite or not positive
 *   (naming the file and tensor); the checkpoint's own errors for unreadable tensors
 */
export function readKvCacheScales(ckpt: Checkpoint, numLayers: number): KvLayerScales[] | null {
  const found = findKvScaleTensors(ckpt.names());
  if (found.size === 0) return null;
  const read = (name: string | undefined): number => (name === undefined ? 1 : readScale(ckpt, name));
  return Array.from({ length: numLayers }, (_, i) => {
    const e = found.get(i);
    return { kScale: read(e?.k), vScale: read(e?.v) };
  });
}

/** readKvCacheScales over the checkpoint in `dir`. */
export function readKvCacheScalesInDir(dir: string, numLayers: number): KvLayerScales[] | null {
  const ckpt = Checkpoint.open(dir);
  try {
    return readKvCacheScales(ckpt, numLayers);
  } finally {
    ckpt.close();
  }
}

function readScale(ckpt: Checkpoint, name: string): number {
  const values = ckpt.readF32(name);
  let s = -Infinity;
  for (const v of values) s = Math.max(s, v);
  if (!(values.length > 0 && Number.isFinite(s) && s > 0) || values.some((v) => !Number.isFinite(v))) {
    const file = ckpt.info(name).file;
    throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `${file}: KV cache scale '${name}' must hold finite positive values, got [${[...values.slice(0, 4)].join(', ')}${values.length > 4 ? ', ...' : ''}]`, { file, tensor: name });
  }
  return s;
}
