import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Scheduler, type ScheduledBatch, type SchedulerConfig } from '../src/engine/scheduler.js';
import { Sequence } from '../src/engine/sequence.js';
import { BlockManager } from '../src/kvcache/block-manager.js';
import { makeSamplingParams } from '../src/sampling/params.js';
import type { SampleResult } from '../src/sampling/sampler.js';
import { isPeregrineError } from '../src/errors.js';

function makeScheduler(numBlocks: number, blockSize: number, config: Partial<SchedulerConfig> = {}): Scheduler {
  const bm = new BlockManager(numBlocks, blockSize);
  return new Scheduler({ maxNumSeqs: 8, maxNumBatchedTokens: 16, maxModelLen: 1024, enableChunkedPrefill: true, ...config }, bm);
}

let nextRequest = 0;
/** Prompts differ from each other (no prefix hits) unless firstToken is given. */
function makeSeq(numPromptTokens: number, maxTokens = 16, firstToken = 1000 * (nextRequest + 1)): Sequence {
  const promptTokenIds = Array.from({ length: numPromptTokens }, (_, i) => firstToken + i);
  return new Sequence({ requestId: `r${nextRequest++}`, promptTokenIds, params: makeSamplingParams({ temperature: 0, maxTokens }) });
}

/** Stands in for the executor: samples (numTokens % 100) where an entry reaches the end of its sequence. */
function fakeResults(batch: ScheduledBatch): Array<SampleResult | null> {
  return batch.entries.map(({ seq, numNewTokens }) =>
    seq.numCachedTokens + numNewTokens === seq.numTokens ? { tokenId: seq.numTokens % 100, logprob: 0, topLogprobs: null } : null,
  );
}

function step(s: Scheduler): ScheduledBatch {
  const batch = s.schedule();
  assert.ok(batch.numBatchedTokens <= s.config.maxNumBatchedTokens);
  assert.equal(batch.numBatchedTokens, batch.entries.reduce((n, e) => n + e.numNewTokens, 0));
  for (const { seq, numNewTokens } of batch.entries) {
    assert.ok(numNewTokens > 0);
    assert.ok(seq.blockTable.length * s.blockManager.blockSize >= seq.numCachedTokens + numNewTokens, 'blocks cover the tokens computed');
  }
  s.postprocess(batch, fakeResults(batch));
  s.blockManager.checkInvariants([...s.running, ...s.waiting]);
  return batch;
}

function shape(batch: ScheduledBatch): Array<[string, number]> {
  return batch.entries.map((e) => [e.seq.requestId, e.numNewTokens]);
}

test('decodes and prefill chunks share the token budget', () => {
  const s = makeScheduler(64, 4, { maxNumBatchedTokens: 16 });
  const [a, b, c] = [makeSeq(5), makeSeq(5), makeSeq(5)];
  s.add(a);
  s.add(b);
  s.add(c);
  assert.deepEqual(shape(step(s)), [[a.requestId, 5], [b.requestId, 5], [c.requestId, 5]]);
  assert.equal(a.numOutputTokens, 1);

  const long = makeSeq(40);
  s.add(long);
  // three decodes first, then the long prompt takes what is left of the budget
  assert.deepEqual(shape(step(s)), [[a.requestId, 1], [b.requestId, 1], [c.requestId, 1], [long.requestId, 13]]);
  assert.equal(long.numCachedTokens, 13);
  assert.equal(long.numOutputTokens, 0, 'a partial prefill does not sample');
  assert.deepEqual(shape(step(s)), [[a.requestId, 1], [b.requestId, 1], [c.requestId, 1], [long.requestId, 13]]);
  const last = step(s);
  assert.deepEqual(shape(last), [[a.requestId, 1], [b.requestId, 1], [c.requestId, 1], [long.requestId, 13]]);
  assert.equal(long.numCachedTokens, 39);
  assert.deepEqual(shape(step(s)), [[a.requestId, 1], [b.requestId, 1], [c.requestId, 1], [long.requestId, 1]]);
  assert.equal(long.numOutputTokens, 1);
});

test('a prompt 5x the budget is prefilled in 5 chunks, sampling only at the end', () => {
  const s = makeScheduler(64, 4, { maxNumBatchedTokens: 8 });
  const seq = makeSeq(40);
  s.add(seq);
  for (let i = 1; i <= 5; i++) {
    const batch = step(s);
    assert.deepEqual(shape(batch), [[seq.requestId, 8]]);
    assert.equal(seq.numCachedTokens, 8 * i);
    assert.equal(seq.numOutputTokens, i === 5 ? 1 : 0);
  }
  assert.deepEqual(shape(step(s)), [[seq.requestId, 1]]);
  assert.equal(seq.numOutputTokens, 2);
});

test('a waiting prompt is chunked next to running decodes', () => {
  const s = makeScheduler(64, 4, { maxNumBatchedTokens: 8 });
  const d = makeSeq(3);
  s.add(d);
  step(s);
  const p = makeSeq(35);
  s.add(p);
  for (let i = 0; i < 5; i++) assert.deepEqual(shape(step(s)), [[d.requestId, 1], [p.requestId, 7]]);
  assert.equal(p.numOutputTokens, 1);
});

test('without chunked prefill a prompt waits until it fits the budget whole', () => {
  const s = makeScheduler(64, 4, { maxNumBatchedTokens: 32, maxModelLen: 32, enableChunkedPrefill: false });
  const [a, b] = [makeSeq(20), makeSeq(20)];
  s.add(a);
  s.add(b);
  assert.deepEqual(shape(step(s)), [[a.requestId, 20]], 'b (20) does not fit the 12 tokens left whole');
  assert.deepEqual(shape(step(s)), [[a.requestId, 1], [b.requestId, 20]]);
  assert.throws(
    () => makeScheduler(64, 4, { maxNumBatchedTokens: 16, maxModelLen: 32, enableChunkedPrefill: false }),
    (e) => isPeregrineError(e, 'PGN_ERR_INVALID_ARGUMENT'),
  );
});

test('maxNumSeqs caps the running set; admission is first come first served', () => {
  const s = makeScheduler(64, 4, { maxNumSeqs: 2, maxNumBatchedTokens: 64 });
  const seqs = [makeSeq(3), makeSeq(3), makeSeq(3)];
  for (const seq of seqs) s.add(seq);
  assert.deepEqual(shape(step(s)), [[seqs[0].requestId, 3], [seqs[1].requestId, 3]]);
  assert.equal(s.numWaiting, 1);
  s.finish(seqs[0]);
  assert.deepEqual(shape(step(s)), [[seqs[1].requestId, 1], [seqs[2].requestId, 3]]);

  // the head of the queue does not fit the free blocks: nothing behind it jumps ahead
  const t = makeScheduler(4, 4, { maxNumBatchedTokens: 64 });
  const [x, big, small] = [makeSeq(8, 4), makeSeq(9, 2), makeSeq(2, 2)];
  t.add(x);
  step(t);
  t.add(big);
  t.add(small);
  assert.deepEqual(shape(step(t)), [[x.requestId, 1]]);
  assert.deepEqual(t.waiting, [big, small]);
});

test('a sequence that cannot grow preempts the newest one, which goes back to the front', () => {
  // 4 blocks of 4: two prompts of 7 tokens take 2 blocks each
  const s = makeScheduler(4, 4, { maxNumBatchedTokens: 64 });
  const [a, b, c] = [makeSeq(7, 8, 1), makeSeq(7, 8, 100), makeSeq(2, 2)];
  s.add(a);
  s.add(b);
  step(s); // both prefill and sample: 8 tokens each, still in 2 blocks
  s.add(c);
  step(s); // decodes of token 8; c cannot be admitted (no blocks)
  assert.equal(s.numWaiting, 1);
  assert.equal(a.numTokens, 9);
  const bOutputs = [...b.outputTokenIds];

  // a needs a third block for token 9: b (newest) is preempted
  const batch = step(s);
  assert.deepEqual(batch.preempted, [b]);
  assert.deepEqual(shape(batch), [[a.requestId, 1]]);
  assert.equal(s.numPreemptions, 1);
  assert.equal(b.numPreemptions, 1);
  assert.equal(b.status, 'waiting');
  assert.deepEqual(s.waiting, [b, c], 'the preempted sequence is first in line');
  assert.deepEqual(b.blockTable, []);
  assert.equal(b.numCachedTokens, 0);
  assert.deepEqual(b.outputTokenIds, bOutputs, 'outputs are kept for the recompute');

  // once a finishes, b is re-admitted and prefills prompt + outputs; a's new block evicted
  // b's tail block, its first block is still cached and hits
  s.finish(a);
  const next = step(s);
  assert.deepEqual(shape(next), [[b.requestId, 9 - 4], [c.requestId, 2]]);
  assert.equal(b.numOutputTokens, bOutputs.length + 1);
  assert.equal(b.numCachedPromptTokens, 0, 'reported from the first admission');
});

test('a sequence within its add-time limit never outgrows the pool', () => {
  const s = makeScheduler(2, 4, { maxNumBatchedTokens: 64 });
  const a = makeSeq(3, 6); // at most 8 tokens of KV: 2 blocks
  s.add(a);
  while (a.numOutputTokens < 6) step(s);
  assert.equal(s.numPreemptions, 0);
  assert.equal(a.blockTable.length, 2);
});

test('requests that can never fit are rejected when added', () => {
  const s = makeScheduler(4, 4, { maxModelLen: 32 });
  assert.throws(
    () => s.add(makeSeq(33)),
    (e) => isPeregrineError(e, 'PGN_ERR_PROMPT_TOO_LONG') && e.details.numPromptTokens === 33 && e.details.maxModelLen === 32,
  );
  // 10 prompt + 8 output tokens: up to 17 tokens of KV, 5 blocks > 4
  assert.throws(
    () => s.add(makeSeq(10, 8)),
    (e) => isPeregrineError(e, 'PGN_ERR_KV_CACHE_EXHAUSTED') && /5 KV blocks/.test(e.message) && e.details.numBlocks === 4,
  );
  s.add(makeSeq(10, 7));
  assert.equal(s.numWaiting, 1);
});

test('abort frees the blocks of running and waiting sequences', () => {
  const s = makeScheduler(8, 4, { maxNumSeqs: 1 });
  const [a, b] = [makeSeq(9), makeSeq(4)];
  s.add(a);
  s.add(b);
  step(s);
  assert.equal(s.blockManager.numUsedBlocks, 3);
  assert.equal(s.abort(b.seqId), b);
  assert.equal(s.abort(a.seqId), a);
  assert.equal(s.abort(a.seqId), null);
  assert.equal(a.status, 'finished');
  assert.equal(s.hasUnfinished(), false);
  assert.equal(s.blockManager.numUsedBlocks, 0);
  s.blockManager.checkInvariants([]);
});

test('postprocess rejects results that do not match the batch', () => {
  const s = makeScheduler(8, 4, { maxNumBatchedTokens: 4 });
  s.add(makeSeq(6));
  const batch = s.schedule();
  assert.throws(() => s.postprocess(batch, []), (e) => isPeregrineError(e, 'PGN_ERR_INTERNAL'));
  assert.throws(() => s.postprocess(batch, [{ tokenId: 1, logprob: 0, topLogprobs: null }]), (e) => isPeregrineError(e, 'PGN_ERR_INTERNAL'));
});

test('async scheduling: placeholders count at launch, are filled at collect, and only known tokens are hashed', () => {
  const s = makeScheduler(64, 4, { maxNumBatchedTokens: 16 });
  const a = makeSeq(7, 3);
  s.add(a);
  // launch 1: the prefill samples into a placeholder
  const b1 = s.schedule();
  const samples1 = s.markComputed(b1);
  assert.deepEqual(samples1, [true]);
  a.appendPlaceholder(0);
  assert.equal(a.numTokens, 8);
  assert.equal(a.numOutputTokens, 0, 'outputs hold real tokens only');
  assert.ok(a.tokenIds[7]! < 0, 'the placeholder is a negative id');
  // launch 2 before collect 1: the decode computes the placeholder position
  const b2 = s.schedule();
  assert.deepEqual(shape(b2), [[a.requestId, 1]]);
  const samples2 = s.markComputed(b2);
  a.appendPlaceholder(0);
  assert.equal(a.numCachedTokens, 8);
  s.blockManager.checkInvariants([...s.running, ...s.waiting]);
  // collect 1: the placeholder becomes token 42 and block 1 can be registered
  s.appendSampled(b1, samples1, [{ tokenId: 42, logprob: 0, topLogprobs: null }]);
  assert.deepEqual(a.outputTokenIds, [42]);
  assert.equal(a.tokenIds[7], 42);
  assert.equal(a.numPendingTokens, 1);
  // max_tokens 3 with 1 output + 1 pending: one more decode, then no slot for a known finish
  const b3 = s.schedule();
  assert.deepEqual(shape(b3), [[a.requestId, 1]]);
  s.markComputed(b3);
  a.appendPlaceholder(0);
  s.appendSampled(b2, samples2, [{ tokenId: 43, logprob: 0, topLogprobs: null }]);
  assert.deepEqual(s.schedule().entries, [], '2 outputs + 1 pending reach max_tokens 3: not scheduled');
  // a prompt sharing a's first 8 tokens hits its two hashed blocks
  const twin = new Sequence({ requestId: 'twin', promptTokenIds: [...a.tokenIds.slice(0, 8), 7, 7], params: makeSamplingParams({ maxTokens: 2 }) });
  s.add(twin);
  const b4 = s.schedule();
  assert.equal(twin.numCachedTokens, 8, 'blocks of known tokens are shared');
  assert.deepEqual(shape(b4), [[twin.requestId, 2]]);
  assert.throws(() => a.appendToken(1), (e: unknown) => isPeregrineError(e, 'PGN_ERR_INTERNAL'), 'a real token cannot follow a placeholder');
});

test('async scheduling: a sequence preempted with a token pending waits for it before readmission', () => {
  const s = makeScheduler(3, 4, { maxNumBatchedTokens: 16 });
  const [a, b] = [makeSeq(4, 8), makeSeq(4, 8)];
  s.add(a);
  s.add(b);
  const b1 = s.schedule();
  const samples = s.markComputed(b1);
  a.appendPlaceholder(0);
  b.appendPlaceholder(1);
  // a and b each need a second block for their placeholder: 3 blocks hold only one of them
  const b2 = s.schedule();
  assert.deepEqual(b2.preempted, [b]);
  assert.equal(b.status, 'waiting');
  assert.equal(b.numPendingTokens, 1);
  assert.deepEqual(shape(b2), [[a.requestId, 1]]);
  s.markComputed(b2);
  a.appendPlaceholder(0);
  assert.ok(!s.schedule().entries.some((e) => e.seq === b), 'not readmitted while its token is pending');
  s.appendSampled(b1, samples, [{ tokenId: 5, logprob: 0, topLogprobs: null }, { tokenId: 6, logprob: 0, topLogprobs: null }]);
  assert.deepEqual(b.outputTokenIds, [6], 'the preempted sequence still gets its token');
  assert.equal(b.numPendingTokens, 0);
});

test('block manager: a full computed block holding a placeholder is hashed only once it is filled', () => {
  const bm = new BlockManager(8, 4);
  const seq = { tokenIds: [1, 2, 3, 4, 5, 6, 7, -1], numTokens: 8, numCachedTokens: 0, blockTable: [] as number[], numPendingTokens: 1 };
  bm.allocate(seq);
  seq.numCachedTokens = 8; // the placeholder's KV is being computed
  bm.cacheFullBlocks(seq);
  const probe = (tokens: number[]): number => {
    const p = { tokenIds: tokens, numTokens: tokens.length, numCachedTokens: 0, blockTable: [] as number[] };
    bm.allocate(p);
    const hit = p.numCachedTokens;
    bm.free(p);
    return hit;
  };
  assert.equal(probe([1, 2, 3, 4, 5, 6, 7, 8, 9]), 4, 'only the first block is registered');
  seq.tokenIds[7] = 8;
  seq.numPendingTokens = 0;
  bm.cacheFullBlocks(seq);
  assert.equal(probe([1, 2, 3, 4, 5, 6, 7, 8, 9]), 8);
  bm.free(seq);
  bm.checkInvariants([]);
});
