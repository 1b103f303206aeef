// Async scheduling in the runner (CPU backend): placeholder tokens in the flattened batch, the
// gatherTokenIds op, and launch/collect against the synchronous execute on a real model.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend, cpuData } from '../src/backends/cpu/cpu-backend.js';
import { placeholderRow, placeholderToken } from '../src/engine/executor.js';
import { Sequence } from '../src/engine/sequence.js';
import { isPeregrineError } from '../src/errors.js';
import { loadModel } from '../src/models/load-model.js';
import { padDecodeBatch } from '../src/runner/decode-graphs.js';
import { buildForwardBatch } from '../src/runner/input-builder.js';
import { ModelRunner, type RunnerEntry } from '../src/runner/model-runner.js';
import { makeSamplingParams, type SamplingParamsInit } from '../src/sampling/params.js';
import type { SampleResult } from '../src/sampling/sampler.js';
import { fixtureDir } from './helpers/golden.js';
import { executeSteps, launchSteps } from './helpers/runner-steps.js';

const BLOCK = 16;

test('placeholder tokens round-trip through their row', () => {
  for (const row of [0, 1, 255]) {
    assert.ok(placeholderToken(row) < 0);
    assert.equal(placeholderRow(placeholderToken(row)), row);
  }
  assert.equal(placeholderRow(0), -1);
  assert.equal(placeholderRow(383), -1);
});

test('the input builder turns placeholders into prevSampledRows; graph padding keeps them', () => {
  const a = { tokenIds: [5, 6, placeholderToken(2)], numCachedTokens: 2, blockTable: [0] };
  const b = { tokenIds: [7, 8, 9], numCachedTokens: 0, blockTable: [1] };
  const fb = buildForwardBatch([{ seq: a, numNewTokens: 1 }, { seq: b, numNewTokens: 3 }], 4, 2);
  assert.deepEqual([...fb.tokenIds], [0, 7, 8, 9]);
  assert.deepEqual([...fb.prevSampledRows!], [2, -1, -1, -1]);
  const plain = buildForwardBatch([{ seq: b, numNewTokens: 3 }], 4, 2);
  assert.equal(plain.prevSampledRows, undefined, 'no field when every token is known');

  const c = { tokenIds: [1, placeholderToken(0)], numCachedTokens: 1, blockTable: [2] };
  const decode = buildForwardBatch([{ seq: a, numNewTokens: 1 }, { seq: c, numNewTokens: 1 }], 4, 2);
  const padded = padDecodeBatch(decode, 4, 9, 4);
  assert.deepEqual([...padded.prevSampledRows!], [2, 0, -1, -1]);
});

test('gatherTokenIds (CPU) reads the rows it is given and keeps the other tokens', () => {
  const b = new CpuBackend();
  const tokenIds = b.fromI32([4], Int32Array.from([1, 2, 3, 4]));
  const src = b.fromI32([3], Int32Array.from([10, 11, 12]));
  b.gatherTokenIds(tokenIds, src, b.fromI32([4], Int32Array.from([-1, 2, 0, -1])), 4);
  assert.deepEqual([...cpuData(tokenIds)], [1, 12, 10, 4]);
  b.gatherTokenIds(tokenIds, src, b.fromI32([4], Int32Array.from([1, 1, 1, 1])), 1);
  assert.deepEqual([...cpuData(tokenIds)], [11, 12, 10, 4], 'only the first numTokens');
  assert.throws(
    () => b.gatherTokenIds(tokenIds, src, b.fromI32([1], Int32Array.from([3])), 1),
    (e: unknown) => isPeregrineError(e, 'PGN_ERR_INTERNAL') && /srcIndex\[0\] = 3/.test((e as Error).message),
  );
});

function makeRunner(): ModelRunner {
  const backend = new CpuBackend();
  const { spec, weights } = loadModel(fixtureDir('llama-linear'), backend);
  return new ModelRunner(backend, spec, weights, { numBlocks: 32, blockSize: BLOCK, maxModelLen: 256, maxNumBatchedTokens: 128, maxNumSeqs: 8 });
}

const PROMPTS = [[3, 17, 42, 9, 100, 7], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [250]];
const PARAMS: SamplingParamsInit[] = [{ temperature: 0 }, { temperature: 0.9, seed: 7 }, { temperature: 0.7, topK: 20, seed: 3 }];

function makeSeqs(): Sequence[] {
  return PROMPTS.map((p, i) => {
    const seq = new Sequence({ requestId: `s${i}`, promptTokenIds: p, params: makeSamplingParams({ ...PARAMS[i], maxTokens: 64 }) });
    seq.blockTable = [4 * i, 4 * i + 1, 4 * i + 2, 4 * i + 3];
    return seq;
  });
}

test('launch: step n+1 reads step n\'s samples as placeholders and gives the synchronous tokens', async () => {
  const NUM_STEPS = 6;
  const sync = makeRunner();
  const syncSeqs = makeSeqs();
  await executeSteps(sync, syncSeqs, NUM_STEPS);

  const runner = makeRunner();
  const seqs = makeSeqs();
  await launchSteps(runner, seqs, NUM_STEPS, (s) => {
    if (s > 0) assert.ok(seqs.every((seq) => seq.numPendingTokens === 1), 'the newest token of each is in flight');
  });
  seqs.forEach((seq, i) => {
    assert.equal(seq.numOutputTokens, NUM_STEPS);
    assert.deepEqual(seq.outputTokenIds, syncSeqs[i]!.outputTokenIds, `sequence ${i}`);
  });
  const timing = runner.stepTiming();
  assert.equal(timing.numSteps, NUM_STEPS);
  assert.ok(timing.meanStepMs > 0 && timing.hostGapFraction >= 0 && timing.hostGapFraction <= 1);
  assert.equal(runner.stepTiming(true).numSteps, NUM_STEPS);
  assert.equal(runner.stepTiming().numSteps, 0, 'reset');
  runner.dispose();
});

test('launch: placeholders need the launch before; at most two launches in flight', async () => {
  const runner = makeRunner();
  const [a, b] = makeSeqs();
  a!.numCachedTokens = a!.numTokens;
  a!.appendPlaceholder(0);
  const orphan = { entries: [{ seq: a!, numNewTokens: 1 }] };
  await assert.rejects(runner.launch(orphan), (e: unknown) => isPeregrineError(e, 'PGN_ERR_INTERNAL') && /was not launched/.test((e as Error).message));
  await assert.rejects(runner.execute(orphan), (e: unknown) => isPeregrineError(e, 'PGN_ERR_INTERNAL'));

  const c = makeSeqs()[2]!;
  const first = await runner.launch({ entries: [{ seq: b!, numNewTokens: b!.numTokens }] });
  const second = await runner.launch({ entries: [{ seq: c, numNewTokens: c.numTokens }] });
  await assert.rejects(runner.launch({ entries: [{ seq: b!, numNewTokens: b!.numTokens }] }), (e: unknown) => isPeregrineError(e, 'PGN_ERR_INTERNAL') && /two launched steps/.test((e as Error).message));
  await first.collect();
  const far = makeSeqs()[0]!;
  far.numCachedTokens = far.numTokens;
  far.appendPlaceholder(5);
  await assert.rejects(runner.launch({ entries: [{ seq: far, numNewTokens: 1 }] }), (e: unknown) => isPeregrineError(e, 'PGN_ERR_INTERNAL') && /sample row 5.*sampled 1 rows/.test((e as Error).message));
  await second.collect();
  runner.dispose();
});

test('canLaunch takes rows that read the token history and refuses prompt logprobs', () => {
  const runner = makeRunner();
  const entry = (params: SamplingParamsInit): { entries: RunnerEntry[] } => {
    const seq = new Sequence({ requestId: 'x', promptTokenIds: [1, 2, 3], params: makeSamplingParams(params) });
    seq.blockTable = [0];
    return { entries: [{ seq, numNewTokens: 3 }] };
  };
  assert.equal(runner.canLaunch(entry({ temperature: 0.5 })), true);
  assert.equal(runner.canLaunch(entry({ repetitionPenalty: 1.2 })), true);
  assert.equal(runner.canLaunch(entry({ presencePenalty: 0.5 })), true);
  assert.equal(runner.canLaunch(entry({ minTokens: 2 })), true);
  assert.equal(runner.canLaunch(entry({ promptLogprobs: 1 })), false);
  runner.dispose();
});
