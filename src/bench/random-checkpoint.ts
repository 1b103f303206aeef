/**
 * A Llama-architecture checkpoint folder of a real shape with random BF16 weights, written to
 * disk as Hugging Face lays it out (config.json, model-0000i-of-0000n.safetensors shards,
 * model.safetensors.index.json): what `bench build` quantizes. Values are N(0, 1/fan_in)-like
 * (a few MB of random bf16 tiled across each tensor, so 16 GB are written in seconds of CPU).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { HfConfig } from '../models/config.js';
import { Rng } from '../sampling/rng.js';
import { f32ToBf16 } from '../weights/dtype.js';
import { INDEX_FILE } from '../weights/checkpoint.js';
import { writeSafetensors, type TensorToWrite } from '../weights/safetensors-writer.js';

const POOL_ELEMS = 1 << 20;
const DEFAULT_MAX_SHARD_BYTES = 4 * 2 ** 30;

export interface RandomCheckpointResult {
  readonly dir: string;
  readonly bytes: number;
  readonly files: readonly string[];
  readonly seconds: number;
}

/** [name, shape, fan_in (0: a norm, filled near 1)] of every tensor, in checkpoint order */
function llamaTensors(c: HfConfig): Array<[string, number[], number]> {
  const H = num(c, 'hidden_size'), L = num(c, 'num_hidden_layers'), nh = num(c, 'num_attention_heads');
  const nkv = typeof c.num_key_value_heads === 'number' ? c.num_key_value_heads : nh;
  const F = num(c, 'intermediate_size'), V = num(c, 'vocab_size');
  const hd = typeof c.head_dim === 'number' ? c.head_dim : H / nh;
  const out: Array<[string, number[], number]> = [['model.embed_tokens.weight', [V, H], H]];
  for (let i = 0; i < L; i++) {
    const p = `model.layers.${i}`;
    out.push(
      [`${p}.input_layernorm.weight`, [H], 0],
      [`${p}.self_attn.q_proj.weight`, [nh * hd, H], H],
      [`${p}.self_attn.k_proj.weight`, [nkv * hd, H], H],
      [`${p}.self_attn.v_proj.weight`, [nkv * hd, H], H],
      [`${p}.self_attn.o_proj.weight`, [H, nh * hd], nh * hd],
      [`${p}.post_attention_layernorm.weight`, [H], 0],
      [`${p}.mlp.gate_proj.weight`, [F, H], H],
      [`${p}.mlp.up_proj.weight`, [F, H], H],
      [`${p}.mlp.down_proj.weight`, [H, F], F],
    );
  }
  out.push(['model.norm.weight', [H], 0]);
  if (!c.tie_word_embeddings) out.push(['lm_head.weight', [V, H], H]);
  return out;
}

function num(c: HfConfig, key: string): number {
  const v = c[key];
  if (typeof v !== 'number') throw new Error(`config has no numeric ${key}`);
  return v;
}

/** `pool` (bf16 bytes) tiled over numel elements, scaled by picking the pool of the right std. */
function tiled(pool: Uint8Array, numel: number): Uint8Array {
  const data = new Uint8Array(numel * 2);
  for (let off = 0; off < data.length; off += pool.length) data.set(pool.subarray(0, Math.min(pool.length, data.length - off)), off);
  return data;
}

function bf16Pool(rng: Rng, std: number, mean: number): Uint8Array {
  const words = new Uint16Array(POOL_ELEMS);
  for (let i = 0; i < POOL_ELEMS; i++) {
    // Irwin-Hall(4) ~ N(0, 1/3): cheap and bounded
    const u = rng.nextFloat() + rng.nextFloat() + rng.nextFloat() + rng.nextFloat() - 2;
    words[i] = f32ToBf16(mean + u * std * Math.sqrt(3));
  }
  return new Uint8Array(words.buffer);
}

/**
 * Writes the checkpoint of `config` (a LlamaForCausalLM-style HF config) into `dir` (created).
 * @example await writeRandomCheckpoint(SHAPES['llama-3.1-8b'], '/tmp/llama8b')
 */
export function writeRandomCheckpoint(config: HfConfig, dir: string, opts: { seed?: number; maxShardBytes?: number } = {}): RandomCheckpointResult {
  const t0 = performance.now();
  fs.mkdirSync(dir, { recursive: true });
  const rng = new Rng(opts.seed ?? 0);
  const pools = new Map<number, Uint8Array>();
  const poolFor = (fanIn: number) => {
    let p = pools.get(fanIn);
    if (!p) pools.set(fanIn, (p = fanIn === 0 ? bf16Pool(rng, 0.02, 1) : bf16Pool(rng, 1 / Math.sqrt(fanIn), 0)));
    return p;
  };
  const maxShard = opts.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES;
  const specs = llamaTensors(config);
  // group tensors into shards of at most maxShard bytes, in order
  const shards: Array<Array<[string, number[], number]>> = [[]];
  let shardBytes = 0;
  for (const t of specs) {
    const bytes = 2 * t[1].reduce((a, b) => a * b, 1);
    if (shardBytes > 0 && shardBytes + bytes > maxShard) {
      shards.push([]);
      shardBytes = 0;
    }
    shards.at(-1)!.push(t);
    shardBytes += bytes;
  }
  const n = shards.length;
  const weightMap: Record<string, string> = {};
  const files: string[] = [];
  let total = 0;
  shards.forEach((shard, i) => {
    const file = `model-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`;
    const tensors: Record<string, TensorToWrite> = {};
    for (const [name, shape, fanIn] of shard) {
      tensors[name] = { dtype: 'BF16', shape, data: tiled(poolFor(fanIn), shape.reduce((a, b) => a * b, 1)) };
      total += tensors[name]!.data.byteLength;
      weightMap[name] = file;
    }
    writeSafetensors(path.join(dir, file), tensors, { format: 'pt' });
    files.push(file);
  });
  fs.writeFileSync(path.join(dir, INDEX_FILE), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2));
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, torch_dtype: 'bfloat16' }, null, 2));
  return { dir, bytes: total, files, seconds: (performance.now() - t0) / 1000 };
}
