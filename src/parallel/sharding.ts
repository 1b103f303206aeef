/**
 * Tensor parallelism, Megatron style: which slice of each canonical weight a rank holds, and
 * the ModelSpec its decoder runs with. Weights are `[out, in]`, after the family's transforms.
 *
 * - Column-parallel (rows of the output split): q|k|v, where a rank takes its heads' rows of q,
 *   of k and of v; gate|up, its rows of gate and of up; an ungated up. Their biases alike.
 *   KV heads are replicated when tp > numKvHeads: a rank keeps the one its query heads read.
 * - Row-parallel (columns of the input split): o_proj and down, each followed by an all-reduce.
 *   Their biases are added once, by rank 0, before the reduce.
 * - Vocab-parallel embedding and LM head: rank r holds vocab rows [r * V / tp, (r + 1) * V / tp)
 *   of each. The embedding looks up only the ids in its rows (Backend.embeddingShard, zeros
 *   elsewhere) and the ranks' lookups are all-reduced; the head's logits are all-gathered. Both
 *   stay whole where tp does not divide the vocab. A tied table is the same slice for both, so
 *   a rank reads it once.
 * - MoE experts are cut by intermediate size like a dense MLP; the router is replicated.
 * - Norms, learned positions, project_in / project_out: replicated.
 */
import { PeregrineError } from '../errors.js';
import type { ShardOf, WeightShard } from '../models/model-weights.js';
import type { GlobalWeight, LayerWeight, ModelSpec } from '../models/spec.js';

/** The tp sizes `spec` can be split into: heads, KV heads and the MLP must divide evenly. */
export function checkTensorParallel(spec: ModelSpec, tp: number): void {
  const fail = (why: string) => new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `tensor parallel size ${tp} ${why} of ${spec.architecture}`, {
    param: 'tp', tp, numHeads: spec.numHeads, numKvHeads: spec.numKvHeads, intermediateSize: spec.intermediateSize,
  });
  if (!Number.isInteger(tp) || tp < 1) throw fail('is not a positive integer; it splits the heads');
  if (spec.numHeads % tp !== 0) throw fail(`does not divide the ${spec.numHeads} attention heads`);
  const kv = spec.numKvHeads;
  if (kv >= tp ? kv % tp !== 0 : tp % kv !== 0) throw fail(`and the ${kv} KV heads do not divide one another (a rank needs whole KV heads, or one replicated)`);
  if (spec.intermediateSize % tp !== 0) throw fail(`does not divide the MLP intermediate size ${spec.intermediateSize}`);
}

/** The KV heads `rank` holds: its share, or the one head its query heads read when tp > numKvHeads. */
export function kvHeadRange(spec: ModelSpec, tp: number, rank: number): { start: number; count: number } {
  const kv = spec.numKvHeads;
  return kv >= tp ? { start: (rank * kv) / tp, count: kv / tp } : { start: Math.floor((rank * kv) / tp), count: 1 };
}

/**
 * The spec a rank's decoder and KV cache run with: its heads, KV heads, MLP width and ALiBi
 * slopes. Hidden size and vocab stay whole (the all-reduces and all-gathers restore them).
 */
export function shardSpec(spec: ModelSpec, tp: number, rank: number): ModelSpec {
  checkTensorParallel(spec, tp);
  checkRank(tp, rank);
  if (tp === 1) return spec;
  const numHeads = spec.numHeads / tp;
  return {
    ...spec,
    numHeads,
    numKvHeads: kvHeadRange(spec, tp, rank).count,
    intermediateSize: spec.intermediateSize / tp,
    alibiSlopes: spec.alibiSlopes ? spec.alibiSlopes.slice(rank * numHeads, (rank + 1) * numHeads) : null,
  };
}

/** What `rank` holds of canonical weight `key` (of the unsharded `spec`). */
export function weightShard(key: GlobalWeight | LayerWeight, spec: ModelSpec, tp: number, rank: number): WeightShard {
  if (tp === 1) return 'all';
  const share = (n: number): [number, number] => [(rank * n) / tp, ((rank + 1) * n) / tp];
  const hd = spec.headDim;
  const q = spec.numHeads * hd;
  const kv = kvHeadRange(spec, tp, rank);
  const kvRows = (offset: number): [number, number] => [offset + kv.start * hd, offset + (kv.start + kv.count) * hd];
  const I = spec.intermediateSize;
  const [a, b] = share(I);
  switch (key) {
    case 'self_attn.qkv_proj.weight':
    case 'self_attn.qkv_proj.bias':
      return { dim: 0, ranges: [share(q), kvRows(q), kvRows(q + spec.numKvHeads * hd)] };
    case 'self_attn.o_proj.weight':
      return { dim: 1, ranges: [share(q)] };
    case 'mlp.gate_up_proj.weight': // dense [2I, H]; MoE experts [E, 2I, H]
    case 'mlp.gate_up_proj.bias':
      return { dim: spec.moe && key.endsWith('weight') ? 1 : 0, ranges: [[a, b], [I + a, I + b]] };
    case 'mlp.up_proj.weight':
    case 'mlp.up_proj.bias':
      return { dim: 0, ranges: [[a, b]] };
    case 'mlp.down_proj.weight': // dense [H, I]; MoE experts [E, H, I]
      return { dim: spec.moe ? 2 : 1, ranges: [[a, b]] };
    case 'self_attn.o_proj.bias':
    case 'mlp.down_proj.bias':
      return rank === 0 ? 'all' : 'none';
    case 'embed_tokens.weight':
    case 'lm_head.weight':
    case 'lm_head.bias': {
      const rows = vocabRows(spec, tp, rank);
      return rows ? { dim: 0, ranges: [rows] } : 'all';
    }
    default:
      return 'all';
  }
}

/**
 * The vocab rows [start, end) rank `rank` holds of the embedding and the LM head, or null when
 * tp does not divide the vocab and every rank holds the whole table.
 */
export function vocabRows(spec: ModelSpec, tp: number, rank: number): [number, number] | null {
  if (tp === 1 || spec.vocabSize % tp !== 0) return null;
  const n = spec.vocabSize / tp;
  return [rank * n, (rank + 1) * n];
}

/** `weightShard` bound to one rank, for loadModelWeights. */
export function shardOf(spec: ModelSpec, tp: number, rank: number): ShardOf {
  checkTensorParallel(spec, tp);
  checkRank(tp, rank);
  return (key) => weightShard(key, spec, tp, rank);
}

function checkRank(tp: number, rank: number): void {
  if (!Number.isInteger(rank) || rank < 0 || rank >= tp) {
    throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `rank ${rank} is not in a tensor-parallel group of ${tp}`, { param: 'rank', rank, tp });
  }
}
