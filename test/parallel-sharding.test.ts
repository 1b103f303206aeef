// Tensor-parallel sharding: which slice of each weight a rank holds (small shapes, by hand),
// the rank's spec, the errors for sizes that do not divide, and the byte-level slices the
// loader applies (checked against the unsharded load of a real fixture).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend, cpuData } from '../src/backends/cpu/cpu-backend.js';
import type { Tensor } from '../src/backends/backend.js';
import { loadModelConfig } from '../src/models/config.js';
import { loadModel } from '../src/models/load-model.js';
import type { ModelSpec } from '../src/models/spec.js';
import { sliceTensor } from '../src/models/weight-transform.js';
import { loadModelShard } from '../src/parallel/load-shard.js';
import { checkTensorParallel, kvHeadRange, shardSpec, vocabRows, weightShard } from '../src/parallel/sharding.js';
import { fixtureDir } from './helpers/golden.js';

/** hidden 8, 4 heads of 2, 2 KV heads, MLP 6, vocab 10 */
function tinySpec(over: Partial<ModelSpec> = {}): ModelSpec {
  const { spec } = loadModelConfig(fixtureDir('llama-gqa-llama3'));
  return { ...spec, hiddenSize: 8, wordEmbedDim: 8, numHeads: 4, numKvHeads: 2, headDim: 2, intermediateSize: 6, vocabSize: 10, ...over };
}

test('tp 2 with GQA: each rank takes its heads\' rows of q, of k and of v; o_proj the matching columns', () => {
  const s = tinySpec(); // q rows 0..8, k rows 8..12, v rows 12..16
  assert.deepEqual(weightShard('self_attn.qkv_proj.weight', s, 2, 0), { dim: 0, ranges: [[0, 4], [8, 10], [12, 14]] });
  assert.deepEqual(weightShard('self_attn.qkv_proj.weight', s, 2, 1), { dim: 0, ranges: [[4, 8], [10, 12], [14, 16]] });
  assert.deepEqual(weightShard('self_attn.qkv_proj.bias', s, 2, 1), { dim: 0, ranges: [[4, 8], [10, 12], [14, 16]] });
  assert.deepEqual(weightShard('self_attn.o_proj.weight', s, 2, 1), { dim: 1, ranges: [[4, 8]] });
});

test('KV heads are replicated when tp exceeds them: every row lands on exactly the ranks that read it', () => {
  for (const [numKvHeads, tp] of [[2, 4], [1, 4], [4, 4], [2, 2]] as const) {
    const s = tinySpec({ numKvHeads, intermediateSize: 12 });
    const q = s.numHeads * s.headDim, kv = numKvHeads * s.headDim;
    const count = new Array(q + 2 * kv).fill(0);
    for (let r = 0; r < tp; r++) {
      const shard = weightShard('self_attn.qkv_proj.weight', s, tp, r);
      assert.ok(typeof shard !== 'string');
      for (const [a, b] of shard.ranges) for (let i = a; i < b; i++) count[i]++;
      // the KV head a rank keeps is the one its query heads read (GQA: q head h reads kv head h / group)
      const firstQHead = (r * s.numHeads) / tp;
      assert.equal(kvHeadRange(s, tp, r).start, Math.floor(firstQHead / (s.numHeads / numKvHeads)));
    }
    const replicas = Math.max(1, tp / numKvHeads);
    assert.deepEqual(count, [...new Array(q).fill(1), ...new Array(2 * kv).fill(replicas)], `kv ${numKvHeads} tp ${tp}`);
    assert.equal(shardSpec(s, tp, 0).numKvHeads, Math.max(1, numKvHeads / tp));
  }
});

test('MLP, MoE experts, biases, vocab-parallel embedding and LM head', () => {
  const s = tinySpec();
  assert.deepEqual(weightShard('mlp.gate_up_proj.weight', s, 2, 1), { dim: 0, ranges: [[3, 6], [9, 12]] }); // its rows of gate, of up
  assert.deepEqual(weightShard('mlp.down_proj.weight', s, 2, 1), { dim: 1, ranges: [[3, 6]] });
  assert.deepEqual(weightShard('mlp.up_proj.weight', s, 2, 0), { dim: 0, ranges: [[0, 3]] });
  const moe = tinySpec({ moe: { numExperts: 4, topK: 2, renormalize: true } });
  assert.deepEqual(weightShard('mlp.gate_up_proj.weight', moe, 2, 1), { dim: 1, ranges: [[3, 6], [9, 12]] }); // [E, 2I, H]
  assert.deepEqual(weightShard('mlp.down_proj.weight', moe, 2, 1), { dim: 2, ranges: [[3, 6]] }); // [E, H, I]
  assert.equal(weightShard('mlp.router.weight', moe, 2, 1), 'all');
  // row-parallel biases are added once, by rank 0
  for (const key of ['self_attn.o_proj.bias', 'mlp.down_proj.bias'] as const) {
    assert.equal(weightShard(key, s, 4, 0), 'all');
    assert.equal(weightShard(key, s, 4, 3), 'none');
  }
  // embedding and LM head: the same vocab rows (a tied table is one slice)
  assert.deepEqual(weightShard('embed_tokens.weight', s, 2, 1), { dim: 0, ranges: [[5, 10]] });
  assert.deepEqual(weightShard('lm_head.weight', s, 2, 1), { dim: 0, ranges: [[5, 10]] });
  assert.deepEqual(weightShard('lm_head.bias', s, 2, 0), { dim: 0, ranges: [[0, 5]] });
  assert.deepEqual(vocabRows(s, 2, 1), [5, 10]);
  const v12 = tinySpec({ vocabSize: 12 });
  assert.deepEqual([0, 1, 2, 3].map((r) => vocabRows(v12, 4, r)), [[0, 3], [3, 6], [6, 9], [9, 12]]);
  assert.deepEqual(weightShard('embed_tokens.weight', v12, 4, 3), { dim: 0, ranges: [[9, 12]] });
  assert.equal(vocabRows(s, 1, 0), null);
  // odd vocab: both whole on every rank
  const odd = tinySpec({ vocabSize: 11 });
  assert.equal(vocabRows(odd, 2, 0), null);
  for (const key of ['embed_tokens.weight', 'lm_head.weight', 'lm_head.bias'] as const) assert.equal(weightShard(key, odd, 2, 1), 'all');
  for (const key of ['norm.weight', 'input_layernorm.weight', 'self_attn.q_norm.weight', 'embed_positions.weight'] as const) {
    assert.equal(weightShard(key, s, 2, 1), 'all');
  }
  assert.equal(weightShard('self_attn.qkv_proj.weight', s, 1, 0), 'all');
});

test('the rank spec: its heads, KV heads, MLP width and ALiBi slopes; hidden and vocab whole', () => {
  const s = tinySpec({ alibiSlopes: [1, 2, 3, 4] });
  const r1 = shardSpec(s, 2, 1);
  assert.equal(r1.numHeads, 2);
  assert.equal(r1.numKvHeads, 1);
  assert.equal(r1.intermediateSize, 3);
  assert.deepEqual(r1.alibiSlopes, [3, 4]);
  assert.equal(r1.hiddenSize, 8);
  assert.equal(r1.vocabSize, 10);
  assert.equal(shardSpec(s, 1, 0), s);
});

test('sizes that do not divide are PGN_ERR_INVALID_ARGUMENT naming the numbers', () => {
  const bad = (s: ModelSpec, tp: number, re: RegExp) =>
    assert.throws(() => checkTensorParallel(s, tp), (e: any) => e.code === 'PGN_ERR_INVALID_ARGUMENT' && re.test(e.message) && e.details.tp === tp);
  bad(tinySpec(), 3, /tensor parallel size 3 does not divide the 4 attention heads/);
  bad(tinySpec({ numHeads: 6, numKvHeads: 3 }), 2, /size 2 and the 3 KV heads do not divide one another/);
  bad(tinySpec({ numHeads: 8, numKvHeads: 2 }), 8, /size 8 does not divide the MLP intermediate size 6/);
  bad(tinySpec(), 0, /size 0 is not a positive integer/);
  assert.throws(() => shardSpec(tinySpec(), 2, 2), (e: any) => e.code === 'PGN_ERR_INVALID_ARGUMENT' && /rank 2 is not in a tensor-parallel group of 2/.test(e.message));
});

test('sliceTensor keeps whole elements of any dim, in range order', () => {
  // BF16 [2, 3, 2]: element i is the 2 bytes (i, 100 + i)
  const bytes = new Uint8Array(24);
  for (let i = 0; i < 12; i++) bytes.set([i, 100 + i], 2 * i);
  const t = { name: 'w', dtype: 'BF16' as const, shape: [2, 3, 2], bytes };
  const ids = (r: { bytes: Uint8Array }) => Array.from({ length: r.bytes.length / 2 }, (_, i) => r.bytes[2 * i]);
  const rows = sliceTensor(t, { dim: 0, ranges: [[1, 2]] });
  assert.deepEqual(rows.shape, [1, 3, 2]);
  assert.deepEqual(ids(rows), [6, 7, 8, 9, 10, 11]);
  const mid = sliceTensor(t, { dim: 1, ranges: [[2, 3], [0, 1]] });
  assert.deepEqual(mid.shape, [2, 2, 2]);
  assert.deepEqual(ids(mid), [4, 5, 0, 1, 10, 11, 6, 7]);
  const cols = sliceTensor(t, { dim: 2, ranges: [[1, 2]] });
  assert.deepEqual(ids(cols), [1, 3, 5, 7, 9, 11]);
  assert.equal(cols.bytes[1], 101);
  assert.throws(() => sliceTensor(t, { dim: 1, ranges: [[2, 4]] }), (e: any) => e.code === 'PGN_ERR_WEIGHTS_SHAPE' && e.message.includes("'w' [2, 3, 2]") && e.message.includes('[2, 4)'));
});

test('a rank loads exactly its slices of a real checkpoint (GPT-2: Conv1D, biases, tied embeddings)', () => {
  const dir = fixtureDir('gpt2');
  const backend = new CpuBackend();
  const full = loadModel(dir, backend);
  const { spec: s } = full;
  const H = s.hiddenSize, V = s.vocabSize, I = s.intermediateSize;
  const data = (t: unknown) => cpuData(t as Tensor) as Float32Array;
  /** the [rows x cols] sub-matrix of a row-major [.., width] matrix */
  const sub = (t: unknown, width: number, rows: [number, number][], cols: [number, number]) => {
    const d = data(t);
    return rows.flatMap(([a, b]) => Array.from({ length: b - a }, (_, i) => [...d.subarray((a + i) * width + cols[0], (a + i) * width + cols[1])])).flat();
  };
  for (const rank of [0, 1]) {
    const shard = loadModelShard(dir, backend, 2, rank);
    const w = shard.weights, l = w.layers[0]!, f = full.weights.layers[0]!;
    const h = H / 2, i2 = I / 2, v2 = V / 2;
    const q: [number, number] = [rank * h, (rank + 1) * h];
    assert.deepEqual([...data(l.qkv)], sub(f.qkv, H, [q, [H + q[0], H + q[1]], [2 * H + q[0], 2 * H + q[1]]], [0, H]));
    assert.deepEqual([...data(l.qkvBias)], sub(f.qkvBias, 3 * H, [[0, 1]], [0, 3 * H]).filter((_, j) => j % H >= q[0] && j % H < q[1]));
    assert.deepEqual([...data(l.o)], sub(f.o, H, [[0, H]], q));
    assert.deepEqual([...data(l.down)], sub(f.down, I, [[0, H]], [rank * i2, (rank + 1) * i2]));
    assert.equal(l.oBias === null, rank === 1);
    assert.equal(l.downBias === null, rank === 1);
    assert.deepEqual([...data(w.embedTokens)], sub(full.weights.embedTokens, H, [[rank * v2, (rank + 1) * v2]], [0, H])); // embedding: vocab rows
    assert.equal(w.lmHead, w.embedTokens); // tied head: the same rows, read once
    assert.deepEqual([...data(l.inputNorm)], [...data(f.inputNorm)]);
    assert.equal(shard.rankSpec.numHeads, s.numHeads / 2);
  }
});
