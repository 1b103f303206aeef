// Load-time weight handling of the model zoo: byte-level transforms (any dtype), and other
// checkpoint layouts of the golden fixtures (Hub names without the base prefix, transformers 5's
// fused experts) giving the same logits as the fixture itself.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { isPeregrineError } from '../src/errors.js';
import { loadModel } from '../src/models/load-model.js';
import { applyWeightTransforms, groupedQkvOrder } from '../src/models/weight-transform.js';
import { ModelRunner } from '../src/runner/model-runner.js';
import { buildForwardBatch } from '../src/runner/input-builder.js';
import { Checkpoint } from '../src/weights/checkpoint.js';
import type { RawTensor } from '../src/weights/safetensors.js';
import { writeSafetensors, type TensorToWrite } from '../src/weights/safetensors-writer.js';
import { fixtureDir, loadGolden } from './helpers/golden.js';

/** a BF16 tensor whose element k holds the bit pattern 0x0100 + k (distinct bytes per element) */
function bf16Iota(shape: number[]): RawTensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const bytes = new Uint8Array(2 * n);
  for (let k = 0; k < n; k++) { bytes[2 * k] = k & 0xff; bytes[2 * k + 1] = 1 + (k >> 8); }
  return { name: 'w', dtype: 'BF16', shape, bytes };
}

function elements(t: RawTensor): number[] {
  return Array.from({ length: t.bytes.length / 2 }, (_, k) => t.bytes[2 * k]! + 256 * (t.bytes[2 * k + 1]! - 1));
}

test('transforms move whole elements: transpose, block permutation, row slice, reshape', () => {
  const t = bf16Iota([2, 3]);
  const tr = applyWeightTransforms(t, [{ kind: 'transpose' }]);
  assert.deepEqual(tr.shape, [3, 2]);
  assert.deepEqual(elements(tr), [0, 3, 1, 4, 2, 5]);

  const p = applyWeightTransforms(bf16Iota([6, 2]), [{ kind: 'permuteBlocks', blockRows: 2, order: [2, 0, 1] }]);
  assert.deepEqual(elements(p), [8, 9, 10, 11, 0, 1, 2, 3, 4, 5, 6, 7]);
  const s = applyWeightTransforms(bf16Iota([4, 3]), [{ kind: 'sliceRows', start: 2 }, { kind: 'reshape', shape: [3, 2] }]);
  assert.deepEqual(s.shape, [3, 2]);
  assert.deepEqual(elements(s), [6, 7, 8, 9, 10, 11]);

  const shapeError = (fn: () => unknown, what: RegExp) =>
    assert.throws(fn, (e: unknown) => isPeregrineError(e, 'PGN_ERR_WEIGHTS_SHAPE') && e.message.includes("'w'") && what.test(e.message));
  shapeError(() => applyWeightTransforms(t, [{ kind: 'reshape', shape: [4, 2] }]), /cannot be viewed as \[4, 2\]/);
  shapeError(() => applyWeightTransforms(t, [{ kind: 'permuteBlocks', blockRows: 1, order: [0, 0] }]), /2 blocks of 1 rows/);
  shapeError(() => applyWeightTransforms(bf16Iota([6]), [{ kind: 'transpose' }]), /2-D/);
});

test('groupedQkvOrder: per-kv-head [group q heads, k, v] blocks -> q | k | v', () => {
  assert.deepEqual(groupedQkvOrder(3, 1), [0, 3, 6, 1, 4, 7, 2, 5, 8], 'NeoX / BLOOM [numHeads, 3, headDim]');
  assert.deepEqual(groupedQkvOrder(2, 2), [0, 1, 4, 5, 2, 6, 3, 7], 'Falcon new architecture');
  assert.deepEqual(groupedQkvOrder(1, 4), [0, 1, 2, 3, 4, 5], 'multi-query: already q | k | v');
});

/** logits of every position of one prompt */
async function promptLogits(dir: string, promptIds: number[]): Promise<Float32Array> {
  const backend = new CpuBackend();
  const m = loadModel(dir, backend);
  const runner = new ModelRunner(backend, m.spec, m.weights, { numBlocks: 16, blockSize: 16, maxModelLen: 64, maxNumBatchedTokens: 64, maxNumSeqs: 4, maxNumLogits: 64 });
  const fb = buildForwardBatch([{ seq: { tokenIds: promptIds, numCachedTokens: 0, blockTable: [0, 1] }, numNewTokens: promptIds.length }], 16, runner.maxBlocksPerSeq);
  const logits = (await runner.forward({ ...fb, logitsIndices: Int32Array.from(promptIds, (_, i) => i) })).slice();
  runner.dispose();
  return logits;
}

/** A copy of a fixture whose tensors are renamed / rebuilt by `rewrite` (null drops a tensor). */
function rewrittenFixture(name: string, rewrite: (tensors: Map<string, RawTensor>) => Record<string, TensorToWrite>): string {
  const src = fixtureDir(name);
  const dir = mkdtempSync(join(tmpdir(), `pgn-zoo-${name}-`));
  copyFileSync(join(src, 'config.json'), join(dir, 'config.json'));
  const ckpt = Checkpoint.open(src);
  const tensors = new Map(ckpt.names().map((n) => [n, ckpt.read(n)] as const));
  ckpt.close();
  writeSafetensors(join(dir, 'model.safetensors'), rewrite(tensors));
  return dir;
}

const asWrite = (t: RawTensor): TensorToWrite => ({ dtype: t.dtype, shape: t.shape, data: t.bytes });

function maxDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

test('GPT-2 saved from the base model (Hub layout: no "transformer." prefix) loads the same model', async () => {
  const g = loadGolden('gpt2');
  const dir = rewrittenFixture('gpt2', (ts) => Object.fromEntries([...ts].map(([n, t]) => [n.replace(/^transformer\./, ''), asWrite(t)])));
  try {
    const c = g.cases[1]!;
    assert.ok(maxDiff(await promptLogits(dir, c.promptIds), c.logits) < 1e-3);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('Mixtral with transformers 5 fused experts (mlp.gate, mlp.experts.gate_up_proj / down_proj) loads the same model', async () => {
  const g = loadGolden('mixtral');
  const dir = rewrittenFixture('mixtral', (ts) => {
    const out: Record<string, TensorToWrite> = {};
    const experts = new Map<string, RawTensor[][]>(); // layer prefix -> [w1, w2, w3] per expert
    for (const [n, t] of ts) {
      const m = /^(model\.layers\.\d+)\.block_sparse_moe\.(gate|experts\.(\d+)\.(w[123]))\.weight$/.exec(n);
      if (!m) { out[n] = asWrite(t); continue; }
      if (m[2] === 'gate') { out[`${m[1]}.mlp.gate.weight`] = asWrite(t); continue; }
      const list = experts.get(m[1]!) ?? [];
      (list[Number(m[3])] ??= [])[Number(m[4]!.slice(1)) - 1] = t;
      experts.set(m[1]!, list);
    }
    const cat = (parts: RawTensor[]) => {
      const data = new Uint8Array(parts.reduce((a, p) => a + p.bytes.length, 0));
      let o = 0;
      for (const p of parts) { data.set(p.bytes, o); o += p.bytes.length; }
      return data;
    };
    for (const [layer, list] of experts) {
      const [I, H] = list[0]![0]!.shape as [number, number];
      out[`${layer}.mlp.experts.gate_up_proj`] = { dtype: list[0]![0]!.dtype, shape: [list.length, 2 * I, H], data: cat(list.flatMap((e) => [e[0]!, e[2]!])) };
      out[`${layer}.mlp.experts.down_proj`] = { dtype: list[0]![0]!.dtype, shape: [list.length, H, I], data: cat(list.map((e) => e[1]!)) };
    }
    return out;
  });
  try {
    const c = g.cases[2]!;
    assert.ok(maxDiff(await promptLogits(dir, c.promptIds), c.logits) < 1e-3);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a tensor missing from a zoo checkpoint is PGN_ERR_WEIGHTS_MISSING_TENSOR naming it', () => {
  const missing = 'gpt_neox.layers.1.attention.query_key_value.weight';
  const dir = rewrittenFixture('gpt-neox', (ts) => Object.fromEntries([...ts].filter(([n]) => n !== missing).map(([n, t]) => [n, asWrite(t)])));
  try {
    assert.throws(() => loadModel(dir, new CpuBackend()), (e: unknown) =>
      isPeregrineError(e, 'PGN_ERR_WEIGHTS_MISSING_TENSOR') && e.message.includes(missing) && e.details.tensor === missing);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('loading reports progress up to its total', () => {
  const seen: [number, number][] = [];
  loadModel(fixtureDir('opt-350m-style'), new CpuBackend(), (loaded, total) => seen.push([loaded, total]));
  const total = seen[0]![1];
  assert.ok(seen.every(([l, t]) => t === total && l <= total), 'never past the total');
  assert.deepEqual(seen.at(-1), [total, total]);
});
