// A mixed step (running sequences' decodes, then a prompt) tells the backend how many leading sequences are
// decodes (AttentionMetadata.numDecodeSeqs), so CUDA can run them on its decode kernel; the tokens are those of
// the same sequences stepped alone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { leadingDecodeSeqs, type AttentionMetadata } from '../src/backends/backend.js';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { Sequence } from '../src/engine/sequence.js';
import { loadModel } from '../src/models/load-model.js';
import { ModelRunner } from '../src/runner/model-runner.js';
import { makeSamplingParams } from '../src/sampling/params.js';
import { executeSteps } from './helpers/runner-steps.js';
import { writeTinyLlama } from './helpers/tiny-checkpoint.js';

const CHECKPOINT = writeTinyLlama({ seed: 91 });
const BLOCK = 16;

test('leadingDecodeSeqs counts the sequences before the first with more than one query row', () => {
  assert.equal(leadingDecodeSeqs(Int32Array.from([0, 1, 2, 5, 6]), 4), 2);
  assert.equal(leadingDecodeSeqs(Int32Array.from([0, 1, 2]), 2), 2);
  assert.equal(leadingDecodeSeqs(Int32Array.from([0, 7, 8]), 2), 0);
  assert.equal(leadingDecodeSeqs(Int32Array.from([0]), 0), 0);
});

test('a mixed step: numDecodeSeqs reaches the backend, tokens as without mixing', async () => {
  const seen: AttentionMetadata[] = [];
  class Recording extends CpuBackend {
    override attention(...args: Parameters<CpuBackend['attention']>): void {
      seen.push(args[3]);
      super.attention(...args);
    }
  }
  const prompts = [[5, 6, 7, 8, 9], [11, 12, 13], [20, 21, 22, 23, 24, 25, 26]];
  const makeSeq = (p: number[], i: number) => {
    const seq = new Sequence({ requestId: `s${i}`, promptTokenIds: p, params: makeSamplingParams({ temperature: 0, maxTokens: 8 }) });
    seq.blockTable = [4 * i, 4 * i + 1];
    return seq;
  };
  const run = async (backend: CpuBackend, mixed: boolean) => {
    const { spec, weights } = loadModel(CHECKPOINT, backend);
    const runner = new ModelRunner(backend, spec, weights, { numBlocks: 16, blockSize: BLOCK, maxModelLen: 32, maxNumBatchedTokens: 64, maxNumSeqs: 4 });
    try {
      const seqs = prompts.map(makeSeq);
      const [a, b, c] = seqs as [Sequence, Sequence, Sequence];
      await executeSteps(runner, [a, b], 2); // prefill, one decode
      // mixed: a and b decode while c's prompt runs in the same step; else c alone first
      if (!mixed) await executeSteps(runner, [c], 1);
      await executeSteps(runner, mixed ? [a, b, c] : [a, b], 1);
      await executeSteps(runner, [a, b, c], 2);
      return seqs.map((s) => [...s.outputTokenIds]);
    } finally {
      runner.dispose();
    }
  };
  const mixedTokens = await run(new Recording(), true);
  const mixedMeta = seen.find((m) => !m.isDecode && m.numSeqs === 3);
  assert.ok(mixedMeta, 'a step of 3 sequences, not all decodes');
  assert.equal(mixedMeta.numDecodeSeqs, 2, 'the two running decodes lead');
  assert.ok(seen.filter((m) => m.isDecode).every((m) => m.numDecodeSeqs === m.numSeqs));
  const plainTokens = await run(new CpuBackend(), false);
  assert.deepEqual(mixedTokens, plainTokens);
});
