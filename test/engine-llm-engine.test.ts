import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LLMEngine, type LLMEngineOptions, type RequestOutput } from '../src/engine/llm-engine.js';
import { placeholderRow, type LaunchedStep, type ModelExecutor } from '../src/engine/executor.js';
import type { ScheduledBatch } from '../src/engine/scheduler.js';
import type { Sequence } from '../src/engine/sequence.js';
import { makeSamplingParams, type SamplingParamsInit } from '../src/sampling/params.js';
import { Rng } from '../src/sampling/rng.js';
import type { SampleResult } from '../src/sampling/sampler.js';
import { Tokenizer } from '../src/tokenizer/tokenizer.js';
import { isPeregrineError } from '../src/errors.js';
import { writeTinyByteLevelTokenizer, BYTE_LEVEL_IDS } from './fixtures/tiny-tokenizer.js';

const VOCAB = 1000;

/**
 * A model stand-in with a paged KV cache of token ids: each entry writes its tokens into
 * the slots of its block table, and a sampling entry reads the whole context back through
 * the block table, so a wrong block table, a clobbered shared block or a stale slot
 * changes the output or throws. next = hash(context) % VOCAB, plus an Rng draw when
 * temperature > 0.
 *
 * `launch` (async scheduling) runs the step at once and reads placeholder tokens from the
 * previous launch's samples, as the runner does on the device; its results come out of
 * `collect`, after a turn of the event loop.
 */
class FakeExecutor implements ModelExecutor {
  readonly eosTokenIds: readonly number[];
  private readonly kvToken: Int32Array;
  private readonly kvPos: Int32Array;
  numSteps = 0;
  maxBatchedTokens = 0;
  failWith: Error | null = null;
  /** overrides the next token (for text tests) */
  script: ((seq: Sequence) => number) | null = null;
  /** sampled ids of the last launch, by sampling row */
  private lastSampled: number[] | null = null;
  numLaunches = 0;
  numUncollected = 0;
  /** canLaunch answers false while set */
  refuseLaunch: ((seq: Sequence) => boolean) | null = null;

  constructor(
    readonly numBlocks: number,
    readonly blockSize = 4,
    readonly maxModelLen = 512,
    eosTokenIds: number[] = [],
  ) {
    this.eosTokenIds = eosTokenIds;
    this.kvToken = new Int32Array(numBlocks * blockSize).fill(-1);
    this.kvPos = new Int32Array(numBlocks * blockSize).fill(-1);
  }

  async execute(batch: ScheduledBatch): Promise<Array<SampleResult | null>> {
    await new Promise((resolve) => setImmediate(resolve));
    this.lastSampled = null;
    return this.run(batch);
  }

  canLaunch(batch: ScheduledBatch): boolean {
    return !batch.entries.some(({ seq }) => this.refuseLaunch?.(seq));
  }

  async launch(batch: ScheduledBatch): Promise<LaunchedStep> {
    assert.ok(this.numUncollected < 2, 'at most two launches in flight');
    const results = this.run(batch);
    this.lastSampled = results.filter((r) => r !== null).map((r) => r!.tokenId);
    this.numLaunches++;
    this.numUncollected++;
    return {
      collect: async () => {
        await new Promise((resolve) => setImmediate(resolve));
        this.numUncollected--;
        return results;
      },
    };
  }

  private run(batch: ScheduledBatch): Array<SampleResult | null> {
    if (this.failWith) throw this.failWith;
    this.numSteps++;
    this.maxBatchedTokens = Math.max(this.maxBatchedTokens, batch.numBatchedTokens);
    const tokenAt = (seq: Sequence, p: number): number => {
      const row = placeholderRow(seq.tokenIds[p]);
      if (row < 0) return seq.tokenIds[p];
      assert.ok(this.lastSampled !== null && row < this.lastSampled.length, `request ${seq.requestId}: placeholder of row ${row} without a launch before`);
      return this.lastSampled[row];
    };
    return batch.entries.map(({ seq, numNewTokens }) => {
      const start = seq.numCachedTokens;
      const end = start + numNewTokens;
      for (let p = start; p < end; p++) {
        const slot = this.slot(seq, p);
        this.kvToken[slot] = tokenAt(seq, p);
        this.kvPos[slot] = p;
      }
      if (end < seq.numTokens) return null;
      let h = 17;
      for (let p = 0; p < end; p++) {
        const slot = this.slot(seq, p);
        if (this.kvPos[slot] !== p || this.kvToken[slot] !== tokenAt(seq, p)) {
          throw new Error(`request ${seq.requestId}: KV slot ${slot} holds token ${this.kvToken[slot]} at ${this.kvPos[slot]}, expected ${tokenAt(seq, p)} at ${p}`);
        }
        h = (h * 31 + this.kvToken[slot] + 7) % 1_000_003;
      }
      let tokenId = h % VOCAB;
      if (seq.params.temperature > 0) {
        seq.samplingState.rng ??= Rng.fromEntropy();
        tokenId = (tokenId + Math.floor(seq.samplingState.rng.nextFloat() * 97)) % VOCAB;
      }
      if (this.script) tokenId = this.script(seq);
      return { tokenId, logprob: -0.5, topLogprobs: seq.params.logprobs === null ? null : [] };
    });
  }

  private slot(seq: Sequence, pos: number): number {
    const block = seq.blockTable[Math.floor(pos / this.blockSize)];
    assert.ok(block !== undefined && block >= 0, `request ${seq.requestId} has no block for position ${pos}`);
    return block * this.blockSize + (pos % this.blockSize);
  }
}

interface Req {
  requestId: string;
  promptTokenIds: number[];
  params: SamplingParamsInit;
}

interface Result {
  tokenIds: number[];
  text: string;
  finishReason: string | null;
  stopReason: string | number | null;
  numCachedPromptTokens: number;
  numOutputs: number;
}

/** Steps the engine until idle, checking the block books every step; returns each request's result. */
async function drain(engine: LLMEngine, results = new Map<string, Result>(), onStep?: (outputs: RequestOutput[]) => void): Promise<Map<string, Result>> {
  for (let guard = 0; engine.hasUnfinishedRequests(); guard++) {
    assert.ok(guard < 10_000, 'engine does not finish');
    const outputs = await engine.step();
    engine.checkInvariants();
    onStep?.(outputs);
    for (const out of outputs) {
      const r = results.get(out.requestId) ?? { tokenIds: [], text: '', finishReason: null, stopReason: null, numCachedPromptTokens: 0, numOutputs: 0 };
      assert.equal(r.finishReason, null, `output after the end for ${out.requestId}`);
      r.tokenIds.push(...out.newTokenIds);
      assert.deepEqual(out.outputTokenIds, r.tokenIds);
      r.text += out.newText;
      r.finishReason = out.finishReason;
      r.stopReason = out.stopReason;
      r.numCachedPromptTokens = out.numCachedPromptTokens;
      r.numOutputs++;
      assert.equal(out.finished, out.finishReason !== null);
      if (out.finished) {
        const { running, waiting } = engine.scheduler;
        assert.ok(![...running, ...waiting].some((seq) => seq.requestId === out.requestId), 'a finished request leaves in the same step');
      }
      results.set(out.requestId, r);
    }
  }
  return results;
}

function add(engine: LLMEngine, req: Req): void {
  engine.addRequest({ requestId: req.requestId, promptTokenIds: req.promptTokenIds, params: makeSamplingParams(req.params) });
}

async function runAll(executor: FakeExecutor, reqs: Req[], options: LLMEngineOptions = {}): Promise<{ engine: LLMEngine; results: Map<string, Result> }> {
  const engine = new LLMEngine(executor, options);
  for (const req of reqs) add(engine, req);
  const results = await drain(engine);
  assert.equal(engine.blockManager.numUsedBlocks, 0, 'every block is released at the end');
  assert.equal(executor.numUncollected, 0, 'no launched step is left in flight');
  if (options.asyncScheduling) assert.ok(executor.numLaunches > 0, 'steps were launched ahead');
  return { engine, results };
}

async function runAlone(req: Req, options: LLMEngineOptions = {}): Promise<Result> {
  const { results } = await runAll(new FakeExecutor(256), [req], options);
  return results.get(req.requestId) as Result;
}

/** Deterministic mixed-length requests; half greedy, half seeded sampling; a third share a 24-token prefix. */
function mixedRequests(n: number, seed: number): Req[] {
  const rng = new Rng(seed);
  const randomTokens = (length: number): number[] => Array.from({ length }, () => Math.floor(rng.nextFloat() * VOCAB));
  const sharedPrefix = randomTokens(24);
  return Array.from({ length: n }, (_, i) => ({
    requestId: `req-${i}`,
    promptTokenIds: [...(i % 3 === 0 ? sharedPrefix : []), ...randomTokens(1 + Math.floor(rng.nextFloat() * 40))],
    params: { temperature: i % 2 ? 0.8 : 0, seed: 1000 + i, maxTokens: 1 + Math.floor(rng.nextFloat() * 40), ignoreEos: true },
  }));
}

/** Every test runs with the synchronous step and with async scheduling. */
for (const asyncScheduling of [false, true]) {
  const suffix = asyncScheduling ? ' (async scheduling)' : '';
  const opts = (o: LLMEngineOptions = {}): LLMEngineOptions => ({ ...o, asyncScheduling });
  const engineOf = (executor: ModelExecutor, o: LLMEngineOptions = {}): LLMEngine => new LLMEngine(executor, opts(o));

  test(`32 concurrent requests give the same tokens as each alone${suffix}`, async () => {
    const reqs = mixedRequests(32, 1);
    const executor = new FakeExecutor(256);
    const { engine, results } = await runAll(executor, reqs, opts({ maxNumSeqs: 16, maxNumBatchedTokens: 64 }));
    for (const req of reqs) {
      const alone = await runAlone(req, opts());
      const together = results.get(req.requestId) as Result;
      assert.deepEqual(together.tokenIds, alone.tokenIds, req.requestId);
      assert.equal(together.tokenIds.length, req.params.maxTokens);
      assert.equal(together.finishReason, 'length');
    }
    assert.ok(executor.maxBatchedTokens <= 64);
    const stats = engine.stats();
    assert.equal(stats.numGeneratedTokens, reqs.reduce((n, r) => n + (r.params.maxTokens as number), 0));
    assert.equal(stats.numPromptTokens, reqs.reduce((n, r) => n + r.promptTokenIds.length, 0));
    assert.equal(stats.numRunning + stats.numWaiting, 0);
  });

  test(`a pool too small for the load preempts, and the outputs stay identical${suffix}`, async () => {
    const reqs = mixedRequests(12, 2);
    const big = await runAll(new FakeExecutor(512), reqs, opts({ maxNumBatchedTokens: 32 }));
    const small = await runAll(new FakeExecutor(26), reqs, opts({ maxNumBatchedTokens: 32 }));
    assert.equal(big.engine.stats().numPreemptions, 0);
    assert.ok(small.engine.stats().numPreemptions > 0, 'the small pool preempted');
    for (const req of reqs) assert.deepEqual(small.results.get(req.requestId)?.tokenIds, big.results.get(req.requestId)?.tokenIds, req.requestId);
    // same with prefix caching off: preempted sequences recompute everything
    const plain = await runAll(new FakeExecutor(26), reqs, opts({ maxNumBatchedTokens: 32, enablePrefixCaching: false }));
    assert.ok(plain.engine.stats().numPreemptions > 0);
    for (const req of reqs) assert.deepEqual(plain.results.get(req.requestId)?.tokenIds, big.results.get(req.requestId)?.tokenIds, req.requestId);
  });

  test(`a repeated long prefix hits the prefix cache with identical outputs${suffix}`, async () => {
    const prefix = Array.from({ length: 50 }, (_, i) => (i * 37) % VOCAB);
    const first: Req = { requestId: 'first', promptTokenIds: [...prefix, 1, 2], params: { temperature: 0, maxTokens: 10 } };
    const second: Req = { requestId: 'second', promptTokenIds: [...prefix, 3], params: { temperature: 0, maxTokens: 10 } };
    const engine = engineOf(new FakeExecutor(64), { maxNumBatchedTokens: 16 });
    add(engine, first);
    const results = await drain(engine);
    add(engine, second);
    await drain(engine, results);
    assert.equal(results.get('first')?.numCachedPromptTokens, 0);
    assert.equal(results.get('second')?.numCachedPromptTokens, 48, '12 full blocks of 4 of the shared 50 tokens');
    assert.ok(engine.stats().prefixCacheHitRate > 0.4);
    assert.ok(engine.stats().numKvBlocksCached > 0);
    assert.deepEqual(results.get('first')?.tokenIds, (await runAlone(first, opts())).tokenIds);
    assert.deepEqual(results.get('second')?.tokenIds, (await runAlone(second, opts())).tokenIds);
    // a request identical to a finished one recomputes only its last prompt token
    const again = engineOf(new FakeExecutor(64));
    add(again, first);
    const r = await drain(again);
    add(again, { ...first, requestId: 'again' });
    await drain(again, r);
    assert.equal(r.get('again')?.numCachedPromptTokens, 48);
    assert.deepEqual(r.get('again')?.tokenIds, r.get('first')?.tokenIds);
  });

  test(`aborts free every block and emit one final output${suffix}`, async () => {
    const reqs = Array.from({ length: 8 }, (_, i) => ({
      requestId: `req-${i}`,
      promptTokenIds: Array.from({ length: 50 }, (_, j) => i * 100 + j),
      params: { maxTokens: 30, ignoreEos: true },
    }));
    const engine = engineOf(new FakeExecutor(128), { maxNumSeqs: 4, maxNumBatchedTokens: 32 });
    for (const req of reqs) add(engine, req);
    const aborts: RequestOutput[] = [];
    let aborted: string[] = [];
    let stepNo = 0;
    await drain(engine, new Map(), (outputs) => {
      aborts.push(...outputs.filter((o) => o.finishReason === 'abort'));
      if (++stepNo !== 3) return;
      // two running (one mid-prefill), the last two waiting, one unknown
      const { running, waiting } = engine.scheduler;
      assert.ok(running.length >= 2 && waiting.length >= 2);
      assert.ok(running.some((s) => s.numCachedTokens < s.numPromptTokens), 'a prefill is in flight');
      aborted = [running[0], running[1], ...waiting.slice(-2)].map((s) => s.requestId);
      const numRunning = running.length;
      for (const id of aborted) assert.equal(engine.abortRequest(id), true);
      assert.equal(engine.abortRequest('nope'), false);
      assert.equal(engine.stats().numRunning, numRunning, 'aborts apply at the next step');
    });
    assert.deepEqual(aborts.map((o) => o.requestId).sort(), aborted.sort());
    for (const o of aborts) {
      assert.equal(o.finished, true);
      assert.deepEqual(o.newTokenIds, []);
    }
    assert.equal(aborts.find((o) => o.requestId === 'req-7')?.outputTokenIds.length, 0, 'aborted while waiting');
    assert.equal(engine.abortRequest(aborted[0]), false, 'already gone');
    assert.equal(engine.blockManager.numUsedBlocks, 0);
    assert.equal(engine.hasUnfinishedRequests(), false);
  });

  test(`stop conditions: eos, maxTokens and the context length${suffix}`, async () => {
    const executor = new FakeExecutor(64, 4, 20, [7]);
    let n = 0;
    executor.script = (seq) => (seq.requestId === 'eos' && ++n === 3 ? 7 : 5);
    const { results } = await runAll(executor, [
      { requestId: 'eos', promptTokenIds: [1, 2, 3], params: { maxTokens: 10 } },
      { requestId: 'ignore', promptTokenIds: [1, 2, 3], params: { maxTokens: 4, ignoreEos: true } },
      { requestId: 'ctx', promptTokenIds: Array.from({ length: 15 }, (_, i) => i), params: { maxTokens: 100 } },
    ], opts());
    assert.deepEqual(results.get('eos')?.tokenIds, [5, 5, 7]);
    assert.equal(results.get('eos')?.finishReason, 'stop');
    assert.equal(results.get('eos')?.stopReason, 7);
    assert.equal(results.get('ignore')?.tokenIds.length, 4);
    assert.equal(results.get('ignore')?.finishReason, 'length');
    assert.equal(results.get('ctx')?.tokenIds.length, 5, 'prompt 15 + 5 outputs = maxModelLen 20');
    assert.equal(results.get('ctx')?.finishReason, 'length');
  });

  test(`text is detokenized incrementally and cut at a stop string${suffix}`, async () => {
    const tok = await Tokenizer.load(writeTinyByteLevelTokenizer());
    const words = [BYTE_LEVEL_IDS.hello, BYTE_LEVEL_IDS.world, BYTE_LEVEL_IDS.hello, BYTE_LEVEL_IDS.world];
    const executor = new FakeExecutor(64, 4, 512, [BYTE_LEVEL_IDS.eos]);
    // outputs so far at sampling time: those collected and those still being sampled
    executor.script = (seq) => words[seq.numOutputTokens + seq.numPendingTokens] ?? BYTE_LEVEL_IDS.eos;
    const prompt = tok.encode('hello');
    const engine = engineOf(executor, { tokenizer: tok });
    add(engine, { requestId: 'plain', promptTokenIds: prompt, params: { maxTokens: 10 } });
    add(engine, { requestId: 'stop', promptTokenIds: prompt, params: { maxTokens: 10, stop: ['worldhello'] } });
    const results = await drain(engine);
    const plain = results.get('plain') as Result;
    assert.equal(plain.text, 'hello worldhello world');
    assert.equal(plain.text, tok.decode(words));
    assert.equal(plain.finishReason, 'stop');
    assert.equal(plain.stopReason, BYTE_LEVEL_IDS.eos);
    const stop = results.get('stop') as Result;
    assert.equal(stop.text, 'hello ');
    assert.equal(stop.stopReason, 'worldhello');
    assert.equal(stop.tokenIds.length, 3);
  });

  test(`logprobs come with each token when asked for${suffix}`, async () => {
    const engine = engineOf(new FakeExecutor(16));
    add(engine, { requestId: 'lp', promptTokenIds: [1, 2, 3], params: { maxTokens: 3, logprobs: 2, ignoreEos: true } });
    add(engine, { requestId: 'none', promptTokenIds: [1, 2, 3], params: { maxTokens: 3, ignoreEos: true } });
    // two tokens each (with async scheduling the first step only launches)
    const outputs: RequestOutput[] = [];
    while (outputs.length < 4) outputs.push(...(await engine.step()));
    for (const o of outputs) {
      if (o.requestId === 'lp') assert.deepEqual(o.newLogprobs?.map((l) => l.tokenId), o.newTokenIds);
      else assert.equal(o.newLogprobs, null);
    }
    assert.equal(outputs.length, 4);
  });

  test(`bad requests are rejected with their codes and harm no other request${suffix}`, async () => {
    const engine = engineOf(new FakeExecutor(8, 4, 30), { maxWaiting: 2 });
    const params = makeSamplingParams({ maxTokens: 4, ignoreEos: true });
    const reject = (init: Parameters<LLMEngine['addRequest']>[0], code: string, check: (e: Error) => boolean = () => true): void =>
      assert.throws(() => engine.addRequest(init), (e: unknown) => isPeregrineError(e) && e.code === code && check(e));

    engine.addRequest({ requestId: 'ok', promptTokenIds: [1, 2, 3], params });
    reject({ requestId: 'ok', promptTokenIds: [1], params }, 'PGN_ERR_INVALID_ARGUMENT', (e) => /ok/.test(e.message));
    reject({ requestId: '', promptTokenIds: [1], params }, 'PGN_ERR_INVALID_ARGUMENT');
    reject({ requestId: 'empty', promptTokenIds: [], params }, 'PGN_ERR_INVALID_ARGUMENT', (e) => /empty prompt/.test(e.message));
    reject({ requestId: 'float', promptTokenIds: [1, 2.5], params }, 'PGN_ERR_INVALID_ARGUMENT', (e) => /token 1 .*2\.5/.test(e.message));
    reject({ requestId: 'long', promptTokenIds: new Array(31).fill(1), params }, 'PGN_ERR_PROMPT_TOO_LONG', (e) => /31 tokens.*30/.test(e.message));
    // 29 prompt + 4 output tokens are capped at maxModelLen 30: 29 tokens of KV, 8 blocks of 4
    engine.addRequest({ requestId: 'fits', promptTokenIds: new Array(29).fill(2), params });
    reject({ requestId: 'queue', promptTokenIds: [1], params }, 'PGN_ERR_QUEUE_FULL');
    assert.equal(engine.stats().numWaiting, 2);

    const small = engineOf(new FakeExecutor(4, 4, 100));
    assert.throws(
      () => small.addRequest({ requestId: 'big', promptTokenIds: new Array(10).fill(1), params: makeSamplingParams({ maxTokens: 20 }) }),
      (e) => isPeregrineError(e, 'PGN_ERR_KV_CACHE_EXHAUSTED'),
    );
    assert.equal(small.hasUnfinishedRequests(), false);

    const results = await drain(engine);
    assert.equal(results.get('ok')?.tokenIds.length, 4);
    assert.equal(results.get('fits')?.tokenIds.length, 1, 'capped at maxModelLen');
    assert.equal(engine.blockManager.numUsedBlocks, 0);
  });

  test(`a failing executor kills the engine${suffix}`, async () => {
    const executor = new FakeExecutor(16);
    const engine = engineOf(executor);
    add(engine, { requestId: 'a', promptTokenIds: [1, 2], params: { maxTokens: 3 } });
    executor.failWith = new Error('device lost');
    await assert.rejects(engine.step(), /device lost/);
    await assert.rejects(engine.step(), (e) => isPeregrineError(e, 'PGN_ERR_ENGINE_DEAD'));
    assert.throws(() => add(engine, { requestId: 'b', promptTokenIds: [1], params: {} }), (e) => isPeregrineError(e, 'PGN_ERR_ENGINE_DEAD'));
  });
}

// ---- async scheduling specifics ------------------------------------------------------------

test('async scheduling launches step n+1 before it collects step n', async () => {
  const executor = new FakeExecutor(64);
  const log: string[] = [];
  const launch = executor.launch.bind(executor);
  executor.launch = async (batch) => {
    const k = executor.numLaunches;
    log.push(`launch ${k}`);
    const step = await launch(batch);
    return { collect: async () => { log.push(`collect ${k}`); return step.collect(); } };
  };
  const engine = new LLMEngine(executor, { asyncScheduling: true });
  assert.equal(engine.asyncScheduling, true);
  add(engine, { requestId: 'a', promptTokenIds: [1, 2, 3], params: { maxTokens: 4, ignoreEos: true } });
  assert.deepEqual(await engine.step(), [], 'the first step only launches');
  const results = await drain(engine);
  assert.equal(results.get('a')?.tokenIds.length, 4);
  // prefill + 3 decodes, each launched before the one before it is collected
  assert.deepEqual(log, ['launch 0', 'launch 1', 'collect 0', 'launch 2', 'collect 1', 'launch 3', 'collect 2', 'collect 3']);
});

test('async scheduling: a finish known by count gets no further slot; a stop found later wastes one', async () => {
  const executor = new FakeExecutor(64, 4, 512, [7]);
  const samplesOf = new Map<string, number>();
  const run = executor.launch.bind(executor);
  executor.launch = async (batch) => {
    for (const { seq, numNewTokens } of batch.entries) {
      if (seq.numCachedTokens + numNewTokens === seq.numTokens) samplesOf.set(seq.requestId, (samplesOf.get(seq.requestId) ?? 0) + 1);
    }
    return run(batch);
  };
  executor.script = (seq) => (seq.requestId === 'eos' && seq.numOutputTokens + seq.numPendingTokens === 2 ? 7 : 5);
  const { results } = await runAll(executor, [
    { requestId: 'count', promptTokenIds: [1, 2, 3], params: { maxTokens: 5 } },
    { requestId: 'eos', promptTokenIds: [1, 2, 3], params: { maxTokens: 5 } },
  ], { asyncScheduling: true });
  assert.equal(results.get('count')?.tokenIds.length, 5);
  assert.equal(samplesOf.get('count'), 5, 'max_tokens: exactly one sampling slot per token');
  assert.deepEqual(results.get('eos')?.tokenIds, [5, 5, 7]);
  assert.equal(samplesOf.get('eos'), 4, 'the slot launched before the eos came back is dropped');
});

test('async scheduling: sequences preempted with a token in flight get it, and are readmitted after', async () => {
  const reqs = mixedRequests(12, 2);
  const executor = new FakeExecutor(26);
  const engine = new LLMEngine(executor, { asyncScheduling: true, maxNumBatchedTokens: 32 });
  let pendingVictims = 0;
  const schedule = engine.scheduler.schedule.bind(engine.scheduler);
  engine.scheduler.schedule = () => {
    const batch = schedule();
    pendingVictims += batch.preempted.filter((seq) => seq.numPendingTokens > 0).length;
    for (const { seq } of batch.entries) assert.ok(seq.numPendingTokens <= 1, 'only the last token of a scheduled sequence may be pending');
    return batch;
  };
  for (const req of reqs) add(engine, req);
  const results = await drain(engine);
  assert.ok(pendingVictims > 0, 'a sequence was preempted while its token was in flight');
  const reference = await runAll(new FakeExecutor(512), reqs, { maxNumBatchedTokens: 32 });
  for (const req of reqs) assert.deepEqual(results.get(req.requestId)?.tokenIds, reference.results.get(req.requestId)?.tokenIds, req.requestId);
  assert.equal(engine.blockManager.numUsedBlocks, 0);
});

test('async scheduling: batches the executor cannot launch run synchronously, with the same outputs', async () => {
  const reqs = mixedRequests(16, 3);
  const executor = new FakeExecutor(256);
  // requests with an odd id need the synchronous step (as penalties do on the runner)
  executor.refuseLaunch = (seq) => Number(seq.requestId.slice(4)) % 5 === 1;
  const mixed = await runAll(executor, reqs, { asyncScheduling: true, maxNumSeqs: 6, maxNumBatchedTokens: 48 });
  const sync = await runAll(new FakeExecutor(256), reqs, { maxNumSeqs: 6, maxNumBatchedTokens: 48 });
  assert.ok(executor.numLaunches > 0 && executor.numLaunches < executor.numSteps, 'both kinds of steps ran');
  for (const req of reqs) assert.deepEqual(mixed.results.get(req.requestId)?.tokenIds, sync.results.get(req.requestId)?.tokenIds, req.requestId);
});

test('async scheduling: an abort while the request\'s token is in flight drops that token', async () => {
  const executor = new FakeExecutor(64);
  const engine = new LLMEngine(executor, { asyncScheduling: true });
  add(engine, { requestId: 'a', promptTokenIds: [1, 2, 3], params: { maxTokens: 20, ignoreEos: true } });
  add(engine, { requestId: 'b', promptTokenIds: [4, 5, 6], params: { maxTokens: 6, ignoreEos: true } });
  let aborted = false;
  const results = await drain(engine, new Map(), (outputs) => {
    if (aborted || !outputs.some((o) => o.requestId === 'a')) return;
    // a has its first token; its second is in flight
    assert.equal(engine.abortRequest('a'), true);
    aborted = true;
  });
  const a = results.get('a') as Result;
  assert.equal(a.finishReason, 'abort');
  assert.equal(a.numOutputs, 2, 'the first token, then the abort: nothing after it');
  assert.equal(a.tokenIds.length, 1);
  assert.equal(results.get('b')?.tokenIds.length, 6);
  assert.equal(engine.blockManager.numUsedBlocks, 0);
  assert.equal(executor.numUncollected, 0);
});

test('PEREGRINE_ASYNC_SCHEDULING=0 turns async scheduling off', () => {
  const before = process.env.PEREGRINE_ASYNC_SCHEDULING;
  process.env.PEREGRINE_ASYNC_SCHEDULING = '0';
  try {
    assert.equal(new LLMEngine(new FakeExecutor(8), { asyncScheduling: true }).asyncScheduling, false);
  } finally {
    if (before === undefined) delete process.env.PEREGRINE_ASYNC_SCHEDULING;
    else process.env.PEREGRINE_ASYNC_SCHEDULING = before;
  }
  assert.equal(new LLMEngine(new FakeExecutor(8), { asyncScheduling: true }).asyncScheduling, true);
  const noLaunch: ModelExecutor = { blockSize: 4, numBlocks: 8, maxModelLen: 64, eosTokenIds: [], execute: async () => [] };
  assert.equal(new LLMEngine(noLaunch, { asyncScheduling: true }).asyncScheduling, false, 'an executor without launch runs synchronously');
});
