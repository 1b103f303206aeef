/**
 * The engine loop over a model executor: one step is schedule -> execute (forward +
 * sample) -> postprocess -> stop checks and detokenization -> outputs. Sequences that
 * finish leave the batch in the same step and their blocks are freed.
 *
 * Async scheduling (vLLM V1's async scheduling, SGLang's overlap scheduler): one step is
 * schedule n+1 -> launch n+1 -> collect n -> postprocess n -> outputs of n, so the host's
 * work for step n+1 runs while the device runs step n. Sequences sampling in n hold a
 * placeholder token in n+1, read on the device (executor.ts). A sequence that finishes at n
 * already has a slot in n+1, whose result is dropped; its blocks are freed at once (the device
 * runs later steps after n+1). Batches launch cannot take (executor.canLaunch) run as the
 * synchronous step, after the step in flight is collected.
 */
import { PeregrineError } from '../errors.js';
import { BlockManager } from '../kvcache/block-manager.js';
import type { PromptLogprob } from '../sampling/prompt-logprobs.js';
import type { SampleResult } from '../sampling/sampler.js';
import { IncrementalDetokenizer } from '../tokenizer/detokenizer.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import type { ExecuteResults, LaunchedStep, ModelExecutor } from './executor.js';
import { Scheduler, type ScheduledBatch } from './scheduler.js';
import { Sequence } from './sequence.js';
import { StopChecker } from './stop-checker.js';
import { DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS, type AddRequestInit, type EngineStats, type LLMEngineOptions, type RequestOutput } from './engine-types.js';

export { DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS } from './engine-types.js';
export type { AddRequestInit, EngineStats, LLMEngineOptions, RequestOutput } from './engine-types.js';

/** A launched step not collected yet. */
interface InflightStep {
  readonly batch: ScheduledBatch;
  /** which entries sample (Scheduler.markComputed at launch) */
  readonly samples: boolean[];
  readonly launched: LaunchedStep;
}

interface RequestState {
  readonly seq: Sequence;
  readonly stopChecker: StopChecker;
  readonly detokenizer: IncrementalDetokenizer | null;
  /** prompt logprobs so far (params.promptLogprobs set), emitted with the first output */
  promptLogprobs: Array<PromptLogprob | null> | null;
}

/**
 * In-flight batching over a {@link ModelExecutor}: requests join and leave between steps.
 * Not re-entrant: one step() at a time; addRequest/abortRequest may be called between
 * or during steps (aborts take effect at the start of the next step).
 * @example
 * const engine = new LLMEngine(executor, { tokenizer, maxNumSeqs: 64 });
 * engine.addRequest({ requestId: 'a', promptTokenIds: ids, params: makeSamplingParams({ maxTokens: 32 }) });
 * while (engine.hasUnfinishedRequests()) for (const out of await engine.step()) process.stdout.write(out.newText);
 */
export class LLMEngine {
  readonly executor: ModelExecutor;
  readonly blockManager: BlockManager;
  readonly scheduler: Scheduler;
  /** whether steps are launched ahead (options.asyncScheduling, the env switch and the executor) */
  readonly asyncScheduling: boolean;
  private readonly tokenizer: Tokenizer | null;
  private readonly maxWaiting: number;
  private readonly requests = new Map<string, RequestState>();
  private readonly pendingAborts = new Set<string>();
  private stepping = false;
  private inflight: InflightStep | null = null;
  private dead: { cause: unknown } | null = null;
  private numPromptTokens = 0;
  private numGeneratedTokens = 0;

  constructor(executor: ModelExecutor, options: LLMEngineOptions = {}) {
    this.executor = executor;
    this.tokenizer = options.tokenizer ?? null;
    this.maxWaiting = options.maxWaiting ?? Infinity;
    this.asyncScheduling = (options.asyncScheduling ?? false) && process.env.PEREGRINE_ASYNC_SCHEDULING !== '0' && typeof executor.launch === 'function';
    this.blockManager = new BlockManager(executor.numBlocks, executor.blockSize, {
      enablePrefixCaching: options.enablePrefixCaching ?? true,
    });
    this.scheduler = new Scheduler(
      {
        maxNumSeqs: options.maxNumSeqs ?? DEFAULT_MAX_NUM_SEQS,
        maxNumBatchedTokens: options.maxNumBatchedTokens ?? DEFAULT_MAX_NUM_BATCHED_TOKENS,
        maxModelLen: executor.maxModelLen,
        enableChunkedPrefill: options.enableChunkedPrefill ?? true,
        maxNumPromptLogprobRows: executor.maxNumPromptLogprobRows ?? 0,
      },
      this.blockManager,
    );
  }

  /**
   * Queues a request. The engine runs one sequence per request: a caller wanting
   * params.n choices adds n requests with seedOffset 0..n-1.
   * @throws PeregrineError PGN_ERR_INVALID_ARGUMENT (bad or duplicate requestId, empty or
   *   non-integer prompt), PGN_ERR_QUEUE_FULL, PGN_ERR_PROMPT_TOO_LONG,
   *   PGN_ERR_KV_CACHE_EXHAUSTED, PGN_ERR_ENGINE_DEAD
   */
  addRequest(init: AddRequestInit): void {
    this.checkAlive();
    const { requestId, promptTokenIds, params } = init;
    if (typeof requestId !== 'string' || requestId.length === 0) {
      throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', 'requestId must be a non-empty string', { param: 'requestId' });
    }
    if (this.requests.has(requestId)) {
      throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `request ${requestId} is already running`, { param: 'requestId', requestId });
    }
    if (!Array.isArray(promptTokenIds) || promptTokenIds.length === 0) {
      throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `request ${requestId} has an empty prompt`, { param: 'prompt', requestId });
    }
    const bad = promptTokenIds.findIndex((id) => !Number.isSafeInteger(id) || id < 0);
    if (bad >= 0) {
      throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `prompt token ${bad} of request ${requestId} is not a token id: ${promptTokenIds[bad]}`, {
        param: 'prompt',
        requestId,
        index: bad,
      });
    }
    if (this.scheduler.numWaiting >= this.maxWaiting) {
      throw new PeregrineError('PGN_ERR_QUEUE_FULL', `the waiting queue is full (${this.maxWaiting} requests)`, { maxWaiting: this.maxWaiting });
    }
    if (params.promptLogprobs !== null && !((this.executor.maxNumPromptLogprobRows ?? 0) > 0)) {
      throw new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', `request ${requestId} asks for prompt logprobs, which this executor does not compute (no logits rows to spare beside the sampling rows: raise maxNumLogits)`, {
        param: 'prompt_logprobs',
        requestId,
      });
    }
    const { eosTokenIds, maxModelLen } = this.executor;
    const seq = new Sequence({ requestId, promptTokenIds, params, seedOffset: init.seedOffset, eosTokenIds, arrivalTime: init.arrivalTime });
    this.scheduler.add(seq);
    const tok = this.tokenizer;
    this.requests.set(requestId, {
      seq,
      stopChecker: new StopChecker(params, eosTokenIds, maxModelLen, seq.numPromptTokens),
      detokenizer: tok ? new IncrementalDetokenizer(tok, promptTokenIds, { skipSpecialTokens: params.skipSpecialTokens }) : null,
      promptLogprobs: params.promptLogprobs !== null ? [null] : null,
    });
  }

  /**
   * Aborts a request; its blocks are freed and its final output (finishReason 'abort')
   * comes out of the next step. Returns false for an unknown or finished request.
   */
  abortRequest(requestId: string): boolean {
    if (!this.requests.has(requestId)) return false;
    this.pendingAborts.add(requestId);
    return true;
  }

  hasUnfinishedRequests(): boolean {
    return this.requests.size > 0;
  }

  /**
   * Runs one iteration and returns an output for every request that sampled a token,
   * finished or was aborted in it. With async scheduling the tokens are those of the step
   * launched by the previous call (the first call may return none).
   * @throws the executor's error; the engine is then dead (PGN_ERR_ENGINE_DEAD afterwards)
   */
  async step(): Promise<RequestOutput[]> {
    this.checkAlive();
    if (this.stepping) throw new PeregrineError('PGN_ERR_INTERNAL', 'step() called while another step is running');
    this.stepping = true;
    try {
      const outputs = this.applyAborts();
      const batch = this.scheduler.schedule();
      if (batch.entries.length > 0 && this.asyncScheduling && (this.executor.canLaunch?.(batch) ?? true)) {
        const prev = this.inflight;
        this.inflight = await this.launch(batch);
        if (prev) await this.collect(prev, outputs);
      } else {
        if (this.inflight) await this.collect(this.takeInflight(), outputs);
        // tokens collected just now may have finished sequences of this batch
        const entries = batch.entries.filter(({ seq }) => seq.status !== 'finished');
        if (entries.length > 0) await this.runSync({ ...batch, entries, numBatchedTokens: entries.reduce((n, e) => n + e.numNewTokens, 0) }, outputs);
      }
      // nothing left to run: the step in flight only holds results to drop
      if (this.inflight && !this.hasUnfinishedRequests()) await this.collect(this.takeInflight(), outputs);
      return outputs;
    } catch (e) {
      this.dead = { cause: e };
      throw e;
    } finally {
      this.stepping = false;
    }
  }

  /** The synchronous step: execute, postprocess, outputs. */
  private async runSync(batch: ScheduledBatch, outputs: RequestOutput[]): Promise<void> {
    const results: ExecuteResults = await this.executor.execute(batch);
    this.collectPromptLogprobs(batch.entries, results);
    this.scheduler.postprocess(batch, results);
    batch.entries.forEach(({ seq }, i) => {
      const result = results[i];
      if (result != null && seq.status === 'running') outputs.push(this.processSample(seq, result));
    });
  }

  /** Queues `batch`; each sampling sequence gets a placeholder for the token it will sample. */
  private async launch(batch: ScheduledBatch): Promise<InflightStep> {
    const launched = await this.executor.launch!(batch);
    const samples = this.scheduler.markComputed(batch);
    let row = 0;
    batch.entries.forEach(({ seq }, i) => {
      if (samples[i]) seq.appendPlaceholder(row++);
    });
    return { batch, samples, launched };
  }

  /** Waits for a launched step's tokens, fills them in and adds the outputs of the sequences still alive. */
  private async collect(step: InflightStep, outputs: RequestOutput[]): Promise<void> {
    const results = await step.launched.collect();
    this.scheduler.appendSampled(step.batch, step.samples, results);
    step.batch.entries.forEach(({ seq }, i) => {
      const result = results[i];
      // a sequence preempted after the launch (waiting now) still gets its token
      if (result != null && seq.status !== 'finished') outputs.push(this.processSample(seq, result));
    });
  }

  private takeInflight(): InflightStep {
    const step = this.inflight!;
    this.inflight = null;
    return step;
  }

  stats(): EngineStats {
    const bm = this.blockManager;
    return {
      numRunning: this.scheduler.numRunning,
      numWaiting: this.scheduler.numWaiting,
      numKvBlocksTotal: bm.numBlocks,
      numKvBlocksUsed: bm.numUsedBlocks,
      numKvBlocksFree: bm.numFreeBlocks,
      numKvBlocksCached: bm.numCachedBlocks,
      prefixCacheHitRate: bm.prefixHitRate,
      numPreemptions: this.scheduler.numPreemptions,
      numPromptTokens: this.numPromptTokens,
      numGeneratedTokens: this.numGeneratedTokens,
    };
  }

  /** Throws PGN_ERR_INTERNAL unless block ref counts match the block tables of the live sequences. */
  checkInvariants(): void {
    this.blockManager.checkInvariants([...this.scheduler.running, ...this.scheduler.waiting]);
  }

  /** Appends each prefill chunk's prompt logprobs (before postprocess: seq.numCachedTokens is the chunk's start). */
  private collectPromptLogprobs(entries: ScheduledBatch['entries'], results: ExecuteResults): void {
    entries.forEach(({ seq }, i) => {
      const chunk = results.promptLogprobs?.[i];
      const state = this.requests.get(seq.requestId);
      if (!chunk || !state?.promptLogprobs || seq.numOutputTokens > 0) return;
      // a prefill from position 0 (again, after a preemption) starts the list over
      if (seq.numCachedTokens === 0) state.promptLogprobs = [null];
      state.promptLogprobs.push(...chunk);
    });
  }

  private processSample(seq: Sequence, result: SampleResult): RequestOutput {
    const state = this.requests.get(seq.requestId) as RequestState;
    const textDelta = state.detokenizer ? state.detokenizer.push(result.tokenId) : '';
    const decision = state.stopChecker.onToken(result.tokenId, textDelta, seq.numOutputTokens);
    this.numGeneratedTokens++;
    if (seq.numOutputTokens === 1) this.numPromptTokens += seq.numPromptTokens;
    if (decision.finished) this.retire(seq);
    return {
      ...this.outputBase(seq),
      newTokenIds: [result.tokenId],
      newText: decision.emitText,
      newLogprobs: seq.params.logprobs != null ? [result] : null,
      promptLogprobs: seq.numOutputTokens === 1 ? state.promptLogprobs : null,
      finished: decision.finished,
      finishReason: decision.reason,
      stopReason: decision.stopReason,
    };
  }

  private applyAborts(): RequestOutput[] {
    const outputs: RequestOutput[] = [];
    for (const requestId of this.pendingAborts) {
      const state = this.requests.get(requestId);
      if (state === undefined) continue; // finished meanwhile
      this.retire(state.seq);
      outputs.push({
        ...this.outputBase(state.seq),
        newTokenIds: [],
        newText: state.stopChecker.flush(),
        newLogprobs: state.seq.params.logprobs != null ? [] : null,
        promptLogprobs: null,
        finished: true,
        finishReason: 'abort',
        stopReason: null,
      });
    }
    this.pendingAborts.clear();
    return outputs;
  }

  private retire(seq: Sequence): void {
    this.scheduler.finish(seq);
    this.requests.delete(seq.requestId);
  }

  private outputBase(seq: Sequence): Pick<RequestOutput, 'requestId' | 'numPromptTokens' | 'numCachedPromptTokens' | 'outputTokenIds'> {
    return {
      requestId: seq.requestId,
      numPromptTokens: seq.numPromptTokens,
      numCachedPromptTokens: seq.numCachedPromptTokens,
      outputTokenIds: [...seq.outputTokenIds],
    };
  }

  private checkAlive(): void {
    if (this.dead !== null) {
      throw new PeregrineError('PGN_ERR_ENGINE_DEAD', 'the engine stopped after a failed step; restart it', {}, { cause: this.dead.cause });
    }
  }
}
