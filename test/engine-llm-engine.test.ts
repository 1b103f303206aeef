import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LLMEngine, type LLMEngineOptions, type RequestOutput } from '../src/engine/llm-engine.js';
import type { ModelExecutor } from '../src/engine/executor.js';
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
    if (this.failWith) throw this.failWith;
    this.numSteps++;
    this.maxBatchedTokens = Math.max(this.maxBatchedTokens, batch.numBatchedTokens);
    return batch.entries.map(({ seq, numNewTokens }) => {
      const start = seq.numCachedTokens;
      const end = start + numNewTokens;
      for (let p = start; p < end; p++) {
        const slot = this.slot(seq, p);
        this.kvToken[slot] = seq.tokenIds[p];
        this.kvPos[slot] = p;
      }
      if (end < seq.numTokens) return null;
      let h = 17;
      for (let p = 0; p < end; p++) {
        const slot = this.slot(seq, p);
        if (this.kvPos[slot] !== p || this.kvToken[slot] !== seq.tokenIds[p]) {
          throw new Error(`request ${seq.requestId}: KV slot ${slot} holds token ${this.kvToken[slot]} at ${this.kvPos[slot]}, expected ${seq.tokenIds[p]} at ${p}`);
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
  return { engine, results };
}

async function runAlone(req: Req): Promise<Result> {
  const { results } = await runAll(new FakeExecutor(256), [req]);
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

test('32 concurrent requests give the same tokens as each alone', async () => {
  const reqs = mixedRequests(32, 1);
  const executor = new FakeExecutor(256);
  const { engine, results } = await runAll(executor, reqs, { maxNumSeqs: 16, maxNumBatchedTokens: 64 });
  for (const req of reqs) {
    const alone = await runAlone(req);
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

test('a pool too small for the load preempts, and the outputs stay identical', async () => {
  const reqs = mixedRequests(12, 2);
  const big = await runAll(new FakeExecutor(512), reqs, { maxNumBatchedTokens: 32 });
  const small = await runAll(new FakeExecutor(26), reqs, { maxNumBatchedTokens: 32 });
  assert.equal(big.engine.stats().numPreemptions, 0);
  assert.ok(small.engine.stats().numPreemptions > 0, 'the small pool preempted');
  for (const req of reqs) assert.deepEqual(small.results.get(req.requestId)?.tokenIds, big.results.get(req.requestId)?.tokenIds, req.requestId);
  // same with prefix caching off: preempted sequences recompute everything
  const plain = await runAll(new FakeExecutor(26), reqs, { maxNumBatchedTokens: 32, enablePrefixCaching: false });
  assert.ok(plain.engine.stats().numPreemptions > 0);
  for (const req of reqs) assert.deepEqual(plain.results.get(req.requestId)?.tokenIds, big.results.get(req.requestId)?.tokenIds, req.requestId);
});

test('a repeated long prefix hits the prefix cache with identical outputs', async () => {
  const prefix = Array.from({ length: 50 }, (_, i) => (i * 37) % VOCAB);
  const first: Req = { requestId: 'first', promptTokenIds: [...prefix, 1, 2], params: { temperature: 0, maxTokens: 10 } };
  const second: Req = { requestId: 'second', promptTokenIds: [...prefix, 3], params: { temperature: 0, maxTokens: 10 } };
  const engine = new LLMEngine(new FakeExecutor(64), { maxNumBatchedTokens: 16 });
  add(engine, first);
  const results = await drain(engine);
  add(engine, second);
  await drain(engine, results);
  assert.equal(results.get('first')?.numCachedPromptTokens, 0);
  assert.equal(results.get('second')?.numCachedPromptTokens, 48, '12 full blocks of 4 of the shared 50 tokens');
  assert.ok(engine.stats().prefixCacheHitRate > 0.4);
  assert.ok(engine.stats().numKvBlocksCached > 0);
  assert.deepEqual(results.get('first')?.tokenIds, (await runAlone(first)).tokenIds);
  assert.deepEqual(results.get('second')?.tokenIds, (await runAlone(second)).tokenIds);
  // a request identical to a finished one recomputes only its last prompt token
  const again = new LLMEngine(new FakeExecutor(64));
  add(again, first);
  const r = await drain(again);
  add(again, { ...first, requestId: 'again' });
  await drain(again, r);
  assert.equal(r.get('again')?.numCachedPromptTokens, 48);
  assert.deepEqual(r.get('again')?.tokenIds, r.get('first')?.tokenIds);
});

test('aborts free every block and emit one final output', async () => {
  const reqs = Array.from({ length: 8 }, (_, i) => ({
    requestId: `req-${i}`,
    promptTokenIds: Array.from({ length: 50 }, (_, j) => i * 100 + j),
    params: { maxTokens: 30, ignoreEos: true },
  }));
  const engine = new LLMEngine(new FakeExecutor(128), { maxNumSeqs: 4, maxNumBatchedTokens: 32 });
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

test('stop conditions: eos, maxTokens and the context length', async () => {
  const executor = new FakeExecutor(64, 4, 20, [7]);
  let n = 0;
  executor.script = (seq) => (seq.requestId === 'eos' && ++n === 3 ? 7 : 5);
  const { results } = await runAll(executor, [
    { requestId: 'eos', promptTokenIds: [1, 2, 3], params: { maxTokens: 10 } },
    { requestId: 'ignore', promptTokenIds: [1, 2, 3], params: { maxTokens: 4, ignoreEos: true } },
    { requestId: 'ctx', promptTokenIds: Array.from({ length: 15 }, (_, i) => i), params: { maxTokens: 100 } },
  ]);
  assert.deepEqual(results.get('eos')?.tokenIds, [5, 5, 7]);
  assert.equal(results.get('eos')?.finishReason, 'stop');
  assert.equal(results.get('eos')?.stopReason, 7);
  assert.equal(results.get('ignore')?.tokenIds.length, 4);
  assert.equal(results.get('ignore')?.finishReason, 'length');
  assert.equal(results.get('ctx')?.tokenIds.length, 5, 'prompt 15 + 5 outputs = maxModelLen 20');
  assert.equal(results.get('ctx')?.finishReason, 'length');
});

test('text is detokenized incrementally and cut at a stop string', async () => {
  const tok = await Tokenizer.load(writeTinyByteLevelTokenizer());
  const words = [BYTE_LEVEL_IDS.hello, BYTE_LEVEL_IDS.world, BYTE_LEVEL_IDS.hello, BYTE_LEVEL_IDS.world];
  const executor = new FakeExecutor(64, 4, 512, [BYTE_LEVEL_IDS.eos]);
  executor.script = (seq) => words[seq.numOutputTokens] ?? BYTE_LEVEL_IDS.eos;
  const prompt = tok.encode('hello');
  const engine = new LLMEngine(executor, { tokenizer: tok });
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

test('logprobs come with each token when asked for', async () => {
  const engine = new LLMEngine(new FakeExecutor(16));
  add(engine, { requestId: 'lp', promptTokenIds: [1, 2, 3], params: { maxTokens: 3, logprobs: 2, ignoreEos: true } });
  add(engine, { requestId: 'none', promptTokenIds: [1, 2, 3], params: { maxTokens: 3, ignoreEos: true } });
  const outputs = (await engine.step()).concat(await engine.step());
  for (const o of outputs) {
    if (o.requestId === 'lp') assert.deepEqual(o.newLogprobs?.map((l) => l.tokenId), o.newTokenIds);
    else assert.equal(o.newLogprobs, null);
  }
  assert.equal(outputs.length, 4);
});

test('bad requests are rejected with their codes and harm no other request', async () => {
  const engine = new LLMEngine(new FakeExecutor(8, 4, 30), { maxWaiting: 2 });
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

  const small = new LLMEngine(new FakeExecutor(4, 4, 100));
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

test('a failing executor kills the engine', async () => {
  const executor = new FakeExecutor(16);
  const engine = new LLMEngine(executor);
  add(engine, { requestId: 'a', promptTokenIds: [1, 2], params: { maxTokens: 3 } });
  executor.failWith = new Error('device lost');
  await assert.rejects(engine.step(), /device lost/);
  await assert.rejects(engine.step(), (e) => isPeregrineError(e, 'PGN_ERR_ENGINE_DEAD'));
  assert.throws(() => add(engine, { requestId: 'b', promptTokenIds: [1], params: {} }), (e) => isPeregrineError(e, 'PGN_ERR_ENGINE_DEAD'));
});
