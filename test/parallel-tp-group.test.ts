// The tensor-parallel group's failure handling on the CPU: a rank that dies mid-step or while
// idle turns the step into PGN_ERR_ENGINE_DEAD on rank 0 (and in the engine above it), quickly
// and without a hang; sizes that do not split the model are refused before any worker starts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LLMEngine } from '../src/engine/llm-engine.js';
import { TpGroup } from '../src/parallel/tp-group.js';
import { buildForwardBatch } from '../src/runner/input-builder.js';
import { makeSamplingParams } from '../src/sampling/index.js';
import { fixtureDir } from './helpers/golden.js';

const RUNNER = { numBlocks: 16, blockSize: 16, maxModelLen: 64, maxNumBatchedTokens: 64, maxNumSeqs: 4 };
/** long enough that a test passing quickly proves the death was noticed, not timed out */
const COLLECTIVE_TIMEOUT_MS = 60_000;
const FAST_MS = 5_000;

function batch(step: number) {
  const tokenIds = [1, 2, 3, 4, 5].map((t) => t + step);
  return buildForwardBatch([{ seq: { tokenIds, numCachedTokens: 0, blockTable: [0] }, numNewTokens: tokenIds.length }], 16, 4);
}

const isDead = (re: RegExp) => (e: any) => e.code === 'PGN_ERR_ENGINE_DEAD' && re.test(e.message);

test('a rank that exits mid-step fails that step and every later one with PGN_ERR_ENGINE_DEAD', async () => {
  const group = await TpGroup.start({ modelDir: fixtureDir('llama-linear'), tp: 4, runner: RUNNER, collectiveTimeoutMs: COLLECTIVE_TIMEOUT_MS, exitAtStep: { rank: 2, step: 1 } });
  try {
    assert.equal((await group.forward(batch(0))).length, 320);
    const t0 = Date.now();
    await assert.rejects(group.forward(batch(1)), isDead(/rank 2 exited \(code 1\)/));
    assert.ok(Date.now() - t0 < FAST_MS);
    await assert.rejects(group.forward(batch(2)), isDead(/rank 2/));
    assert.ok(group.dead);
  } finally {
    await group.dispose();
  }
});

test('a rank killed while idle fails the next step at once', async () => {
  const group = await TpGroup.start({ modelDir: fixtureDir('mistral'), tp: 2, runner: RUNNER, collectiveTimeoutMs: COLLECTIVE_TIMEOUT_MS });
  try {
    await group.forward(batch(0));
    await group.kill(1);
    const t0 = Date.now();
    await assert.rejects(group.forward(batch(1)), isDead(/tensor-parallel rank 1 exited/));
    assert.ok(Date.now() - t0 < FAST_MS);
  } finally {
    await group.dispose();
  }
});

test('the engine over a group whose rank dies stops with PGN_ERR_ENGINE_DEAD', async () => {
  const group = await TpGroup.start({ modelDir: fixtureDir('llama-linear'), tp: 2, runner: RUNNER, collectiveTimeoutMs: COLLECTIVE_TIMEOUT_MS, exitAtStep: { rank: 1, step: 3 } });
  try {
    const engine = new LLMEngine(group, { maxNumSeqs: 4, maxNumBatchedTokens: 64 });
    engine.addRequest({ requestId: 'a', promptTokenIds: [1, 2, 3], params: makeSamplingParams({ temperature: 0, maxTokens: 10, ignoreEos: true }) });
    let steps = 0;
    await assert.rejects(async () => { while (engine.hasUnfinishedRequests()) { await engine.step(); steps++; } }, isDead(/rank 1 exited/));
    assert.equal(steps, 3);
    await assert.rejects(engine.step(), (e: any) => e.code === 'PGN_ERR_ENGINE_DEAD');
  } finally {
    await group.dispose();
  }
});

test('a tp that does not split the heads is refused before any worker starts', async () => {
  await assert.rejects(TpGroup.start({ modelDir: fixtureDir('bloom'), tp: 4, runner: RUNNER }),
    (e: any) => e.code === 'PGN_ERR_INVALID_ARGUMENT' && /size 4 does not divide the 6 attention heads/.test(e.message));
  await assert.rejects(TpGroup.start({ modelDir: fixtureDir('no-such-model'), tp: 2, runner: RUNNER }), (e: any) => e.code === 'PGN_ERR_CONFIG_NOT_FOUND');
});
