// CPU parity with Hugging Face transformers on the golden fixtures (tools/fixtures/make_fixtures.py):
// full prompt logits (one batch of mixed-length prompts) and 24 greedy tokens, single and batched.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { loadModel } from '../src/models/load-model.js';
import { ModelRunner } from '../src/runner/model-runner.js';
import { buildForwardBatch } from '../src/runner/input-builder.js';
import { simpleGenerate } from '../src/runner/simple-generate.js';
import { listFixtures, loadGolden } from './helpers/golden.js';

const LOGIT_TOL = 1e-3;

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

function makeRunner(name: string) {
  const g = loadGolden(name);
  const backend = new CpuBackend();
  const model = loadModel(g.dir, backend);
  const runner = new ModelRunner(backend, model.spec, model.weights, {
    numBlocks: 256, blockSize: 16, maxModelLen: 256, maxNumBatchedTokens: 256, maxNumSeqs: 64, maxNumLogits: 256,
  });
  return { g, runner };
}

for (const name of listFixtures()) {
  test(`${name}: prompt logits of a mixed-length batch match transformers`, async () => {
    const { g, runner } = makeRunner(name);
    // every prompt in one flattened batch, logits for every position
    let next = 0;
    const seqs = g.cases.map((c) => {
      const n = Math.ceil(c.promptIds.length / 16);
      const blockTable = Array.from({ length: n }, (_, j) => next + n - 1 - j); // blocks out of order on purpose
      next += n;
      return { tokenIds: c.promptIds, numCachedTokens: 0, blockTable };
    });
    const fb = buildForwardBatch(seqs.map((seq) => ({ seq, numNewTokens: seq.tokenIds.length })), 16, runner.maxBlocksPerSeq);
    const all = Int32Array.from({ length: fb.numTokens }, (_, i) => i);
    const logits = await runner.forward({ ...fb, logitsIndices: all });
    const V = g.vocabSize;
    let row = 0;
    for (const [ci, c] of g.cases.entries()) {
      const got = logits.subarray(row * V, (row + c.promptIds.length) * V);
      row += c.promptIds.length;
      const err = maxAbsDiff(got, c.logits);
      assert.ok(err < LOGIT_TOL, `${name} case ${ci}: max |logit error| ${err}`);
    }
    runner.dispose();
  });

  test(`${name}: 24 greedy tokens match transformers, one sequence and batched`, async () => {
    const { g, runner } = makeRunner(name);
    for (const [ci, c] of g.cases.entries()) {
      const single = await simpleGenerate(runner, [c.promptIds], { temperature: 0, maxTokens: c.greedyIds.length, ignoreEos: true, keepLogits: true });
      assert.deepEqual(single.tokenIds[0], c.greedyIds, `${name} case ${ci} alone`);
      const V = g.vocabSize;
      single.stepLogits![0]!.forEach((row, k) => {
        const err = maxAbsDiff(row, c.greedyLogits.subarray(k * V, (k + 1) * V));
        assert.ok(err < LOGIT_TOL, `${name} case ${ci} step ${k}: max |logit error| ${err}`);
      });
    }
    const batched = await simpleGenerate(runner, g.cases.map((c) => c.promptIds), { temperature: 0, maxTokens: 24, ignoreEos: true });
    g.cases.forEach((c, ci) => assert.deepEqual(batched.tokenIds[ci], c.greedyIds, `${name} case ${ci} batched`));
    runner.dispose();
  });
}
