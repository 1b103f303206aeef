// Invariants of the generic decoder on the CPU backend, independent of HF: a sequence's logits
// do not depend on what else is in the batch, on how its prompt is chunked, on where its KV
// blocks live, or on whether its context was computed in an earlier step.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { loadModel } from '../src/models/load-model.js';
import { ModelRunner } from '../src/runner/model-runner.js';
import { buildForwardBatch } from '../src/runner/input-builder.js';
import { writeTinyLlama } from './helpers/tiny-checkpoint.js';

const TOL = 1e-4;

function setup() {
  const dir = writeTinyLlama({ seed: 7 });
  const backend = new CpuBackend();
  const m = loadModel(dir, backend);
  rmSync(dir, { recursive: true });
  const runner = new ModelRunner(backend, m.spec, m.weights, { numBlocks: 64, blockSize: 4, maxModelLen: 128, maxNumBatchedTokens: 128, maxNumSeqs: 16, maxNumLogits: 128 });
  return { runner, V: m.spec.vocabSize };
}

function closeTo(a: Float32Array, b: Float32Array, what: string) {
  assert.equal(a.length, b.length, what);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  assert.ok(m < TOL, `${what}: max diff ${m}`);
}

const promptA = [5, 17, 33, 2, 9, 101, 44, 7, 8, 200, 13];
const promptB = [3, 3, 90, 14];

test('batched prefill equals each sequence alone', async () => {
  const { runner } = setup();
  const seqA = { tokenIds: promptA, numCachedTokens: 0, blockTable: [10, 3, 7] };
  const seqB = { tokenIds: promptB, numCachedTokens: 0, blockTable: [20] };
  const alone = await runner.forward(buildForwardBatch([{ seq: seqA, numNewTokens: promptA.length }], 4, runner.maxBlocksPerSeq));
  const seqA2 = { ...seqA, blockTable: [1, 2, 0] }; // other blocks, same content
  const both = await runner.forward(buildForwardBatch([{ seq: seqB, numNewTokens: promptB.length }, { seq: seqA2, numNewTokens: promptA.length }], 4, runner.maxBlocksPerSeq));
  closeTo(both.subarray(runner.spec.vocabSize), alone, 'A in a batch vs alone');
});

test('chunked prefill and decode steps reproduce the full-prompt logits', async () => {
  const { runner, V } = setup();
  const table = [5, 6, 7];
  const full = { tokenIds: promptA, numCachedTokens: 0, blockTable: table };
  const all = Int32Array.from({ length: promptA.length }, (_, i) => i);
  const fb = buildForwardBatch([{ seq: full, numNewTokens: promptA.length }], 4, runner.maxBlocksPerSeq);
  const ref = (await runner.forward({ ...fb, logitsIndices: all })).slice();
  // chunk of 6 then one token at a time, reusing the cache written by earlier steps
  const s = { tokenIds: promptA, numCachedTokens: 0, blockTable: [30, 31, 32] };
  const first = await runner.forward(buildForwardBatch([{ seq: s, numNewTokens: 6 }], 4, runner.maxBlocksPerSeq));
  closeTo(first, ref.subarray(5 * V, 6 * V), 'after a 6-token chunk');
  for (let p = 6; p < promptA.length; p++) {
    const step = await runner.forward(buildForwardBatch([{ seq: { ...s, numCachedTokens: p }, numNewTokens: 1 }], 4, runner.maxBlocksPerSeq));
    closeTo(step, ref.subarray(p * V, (p + 1) * V), `decode at position ${p}`);
  }
});
