// The runner's decode-graph paths on the CPU, through a backend that records "graphs" as CUDA captures
// them (test/helpers/graph-recording-backend.ts): captured once per (batch bucket, context bucket), replayed
// every decode step, padded rows harmless, nothing uploaded or downloaded inside a capture; tokens and
// logits equal to the runner without graphs, for execute and for async launch / collect.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Backend } from '../src/backends/backend.js';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { Sequence } from '../src/engine/sequence.js';
import { loadModel } from '../src/models/load-model.js';
import { ModelRunner } from '../src/runner/model-runner.js';
import { makeSamplingParams, type SamplingParamsInit } from '../src/sampling/params.js';
import { graphRecordingBackend } from './helpers/graph-recording-backend.js';
import { entriesOf, executeSteps, launchSteps } from './helpers/runner-steps.js';
import { writeTinyLlama } from './helpers/tiny-checkpoint.js';

const BLOCK = 16;
const BLOCKS_PER_SEQ = 40; // 640 tokens: past the first context bucket (512)

/** a tiny random Llama with room for 1024 positions (the golden fixtures stop at 512) */
const CHECKPOINT = writeTinyLlama({ maxPositions: 1024, seed: 77 });

function makeRunner(backend: Backend, maxNumSeqs = 8): ModelRunner {
  const { spec, weights } = loadModel(CHECKPOINT, backend);
  return new ModelRunner(backend, spec, weights, { numBlocks: 4 * BLOCKS_PER_SEQ, blockSize: BLOCK, maxModelLen: 1024, maxNumBatchedTokens: 1024, maxNumSeqs });
}

/** three sequences (a batch padded to the bucket of 4), one of them long enough to cross the 512-token context bucket */
const PROMPTS = [Array.from({ length: 505 }, (_, i) => (i * 37) % 250 + 3), [5, 6, 7, 8, 9, 10, 11], [250]];
const PARAMS: SamplingParamsInit[] = [{ temperature: 0 }, { temperature: 0.9, seed: 7 }, { temperature: 0.7, topK: 20, seed: 3 }];

function makeSeqs(): Sequence[] {
  return PROMPTS.map((p, i) => {
    const seq = new Sequence({ requestId: `s${i}`, promptTokenIds: p, params: makeSamplingParams({ ...PARAMS[i], maxTokens: 64 }) });
    seq.blockTable = Array.from({ length: BLOCKS_PER_SEQ }, (_, j) => BLOCKS_PER_SEQ * i + j);
    return seq;
  });
}

/** prefill, then `steps` decode steps of every sequence through execute; returns the output ids */
async function runSync(runner: ModelRunner, steps: number): Promise<number[][]> {
  const seqs = makeSeqs();
  await executeSteps(runner, seqs, steps + 1);
  return seqs.map((seq) => [...seq.outputTokenIds]);
}

const STEPS = 12; // the long sequence goes from 505 to 517 tokens: two context buckets

let plain: Promise<number[][]> | null = null;
/** the output ids of the same steps on a runner without graphs (run once, shared by the tests) */
function plainTokens(): Promise<number[][]> {
  plain ??= (async () => {
    const runner = makeRunner(new CpuBackend());
    try {
      return await runSync(runner, STEPS);
    } finally {
      runner.dispose();
    }
  })();
  return plain;
}

test('decode graphs (recorded on the CPU): captured per batch and context bucket, replayed each step, the same tokens as without graphs', async () => {
  const expected = await plainTokens();

  const { backend, stats } = graphRecordingBackend();
  const runner = makeRunner(backend);
  const got = await runSync(runner, STEPS);
  assert.deepEqual(got, expected);
  assert.equal(stats.replays, STEPS, 'every decode step replays a graph (the prefill runs eagerly)');
  assert.equal(runner.numCapturedGraphs, 2, 'batch bucket 4 at context buckets 512 and 2048');
  assert.equal(stats.captures, 2);
  assert.ok(stats.recordedOps > 0);
  runner.dispose();
});

test('decode graphs with async launch / collect: placeholders gathered inside the graph, the synchronous tokens', async () => {
  const expected = await plainTokens();

  const { backend, stats } = graphRecordingBackend();
  const runner = makeRunner(backend);
  const seqs = makeSeqs();
  await launchSteps(runner, seqs, STEPS + 1);
  assert.deepEqual(seqs.map((seq) => [...seq.outputTokenIds]), expected);
  assert.equal(stats.replays, STEPS);
  runner.dispose();
});

test('the recording backend enforces CUDA capture rules: no upload, download or synchronize inside a capture', async () => {
  const { backend } = graphRecordingBackend();
  const t = backend.empty([4], 'i32');
  backend.beginCapture();
  assert.throws(() => backend.writeI32(t, Int32Array.of(1, 2, 3, 4)), /writeI32 during a graph capture/);
  assert.throws(() => backend.synchronize(), /synchronize during a graph capture/);
  backend.add(backend.empty([1, 4], 'f32'), backend.empty([1, 4], 'f32'), backend.empty([1, 4], 'f32'), 1);
  const g = backend.endCapture() as unknown as { ops: unknown[] };
  assert.equal(g.ops.length, 1, 'the add was recorded, not run');
  assert.throws(() => backend.endCapture(), /without beginCapture/);
});

test('captureDecodeGraphs: every batch bucket at the first context bucket, up front; decoding then only captures longer contexts; same tokens', async () => {
  const expected = await plainTokens();
  const noGraphs = makeRunner(new CpuBackend());
  assert.equal(await noGraphs.captureDecodeGraphs(), 0, 'a backend without graphs captures nothing');
  noGraphs.dispose();

  const { backend, stats } = graphRecordingBackend();
  const runner = makeRunner(backend);
  assert.equal(await runner.captureDecodeGraphs(), 4, 'buckets 1, 2, 4, 8 at context 512');
  assert.equal(stats.replays, 0, 'capturing replays nothing');
  assert.equal(await runner.captureDecodeGraphs(), 0, 'a second call finds them all');
  const got = await runSync(runner, STEPS);
  assert.deepEqual(got, expected, 'the up-front captures (padding rows on the scratch block) left every sequence intact');
  assert.equal(runner.numCapturedGraphs, 5, 'only bucket 4 at context 2048 was captured while decoding');
  assert.equal(stats.replays, STEPS);
  runner.dispose();
});

test('bench latency --profile over a graph-capturing backend: the per-row graph replays, the whole-step graph and the attention plans run (CPU, recorded graphs)', async () => {
  const { profileDecodeStep } = await import('../src/bench/decode-profile.js');
  const { buildForwardBatch } = await import('../src/runner/input-builder.js');
  const { backend, stats } = graphRecordingBackend();
  const runner = makeRunner(backend);
  const seqs = makeSeqs();
  await runner.execute({ entries: entriesOf(seqs) }); // prefill: the KV cache holds the prompts
  seqs.forEach((seq) => { seq.numCachedTokens = seq.numTokens; seq.appendToken(1); });
  const fb = buildForwardBatch(seqs.map((seq) => ({ seq, numNewTokens: 1 })), BLOCK, runner.maxBlocksPerSeq);
  const profile = await profileDecodeStep(runner, fb);
  assert.equal(profile.numRows, 4, 'three sequences padded to the graph bucket of four');
  assert.ok(profile.graphMs !== null && profile.graphMs >= 0, 'the whole forward replayed as one graph');
  assert.ok(profile.ops.length > 5 && profile.ops.every((o) => o.graphMs !== undefined), 'every row replayed alone as a graph');
  assert.ok(profile.attention.length >= 2, 'the attention plans');
  assert.ok(stats.captures > profile.ops.length, `${stats.captures} captures`);
  runner.dispose();
});
