/**
 * Which checkpoint tensors are linear weights to quantize, read off the family's weight map:
 * the attention (q|k|v, o) and dense MLP (gate|up, up, down) projections of every layer, and the
 * LM head on request. Embeddings, norms, biases, MoE experts and routers stay as they are, and so
 * do entries a load transform reshapes across K (GPT-2's transposed Conv1D).
 */
import type { Checkpoint } from '../checkpoint.js';
import type { LayerWeight, ModelSpec, WeightEntry, WeightMap, WeightSource } from '../../models/spec.js';

const ATTENTION_LINEARS: readonly LayerWeight[] = ['self_attn.qkv_proj.weight', 'self_attn.o_proj.weight'];
const MLP_LINEARS: readonly LayerWeight[] = ['mlp.gate_up_proj.weight', 'mlp.up_proj.weight', 'mlp.down_proj.weight'];
/** transforms that keep rows whole, so a weight quantized as stored loads back right */
const ROW_TRANSFORMS = new Set(['permuteBlocks', 'sliceRows']);

export interface LinearTargets {
  /** checkpoint tensor names to quantize */
  readonly names: ReadonlySet<string>;
  /** linear weights left unquantized, with the reason */
  readonly skipped: readonly { readonly name: string; readonly reason: string }[];
}

export function linearTargets(ckpt: Checkpoint, spec: ModelSpec, map: WeightMap, includeLmHead: boolean): LinearTargets {
  const names = new Set<string>();
  const skipped: { name: string; reason: string }[] = [];
  const prefix = map.basePrefix === undefined ? '' : `${map.basePrefix}.`;
  const present = (n: string): string | null => (ckpt.has(n) ? n : prefix && n.startsWith(prefix) && ckpt.has(n.slice(prefix.length)) ? n.slice(prefix.length) : null);
  const add = (entry: WeightEntry | undefined, layer: number) => {
    const src = entry === undefined ? null : resolve(entry, layer, present);
    if (!src) return;
    const moving = (src.transforms ?? []).find((t) => !ROW_TRANSFORMS.has(t.kind));
    if (moving) for (const n of src.resolved) skipped.push({ name: n, reason: `its '${moving.kind}' load transform moves the input dim` });
    else for (const n of src.resolved) names.add(n);
  };
  const keys = [...ATTENTION_LINEARS, ...(spec.moe ? [] : MLP_LINEARS)];
  for (let i = 0; i < spec.numLayers; i++) for (const key of keys) add(map.layer[key], i);
  if (includeLmHead && !spec.tieWordEmbeddings) add(map.global['lm_head.weight'], 0);
  return { names, skipped };
}

function resolve(entry: WeightEntry, layer: number, present: (n: string) => string | null): (WeightSource & { resolved: string[] }) | null {
  const src: WeightSource = typeof entry === 'string' || Array.isArray(entry) ? { names: entry as string | readonly string[] } : (entry as WeightSource);
  const wanted = (typeof src.names === 'string' ? [src.names] : [...src.names]).map((n) => n.replaceAll('{i}', String(layer)));
  const found = wanted.map(present);
  if (found.every((n) => n !== null)) return { ...src, resolved: found as string[] };
  return src.fallback === undefined ? null : resolve(src.fallback, layer, present);
}
