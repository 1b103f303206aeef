/**
 * In-flight batching (vLLM v1's policy, nano-vllm's shape). Every step:
 *   1. running sequences in admission order: a decode takes 1 token, an unfinished
 *      prefill its next chunk; a sequence that cannot get a block preempts the newest
 *      running one (recompute: blocks freed, back to the front of the queue);
 *   2. then, if nothing was preempted, waiting sequences first come first served while
 *      the token budget, maxNumSeqs and free blocks allow; a prompt longer than the
 *      remaining budget is split into chunks across steps.
 * An entry computes tokens [seq.numCachedTokens, seq.numCachedTokens + numNewTokens) and
 * samples one token iff that range reaches seq.numTokens.
 *
 * Async scheduling: the step after a launched one is scheduled before its tokens are known.
 * A sequence sampling a token there already counts it (a placeholder); one whose finish is then
 * known by count (max_tokens, the context length) is not scheduled again, and one preempted
 * with a token pending is not readmitted before that token is filled in.
 */
import { PeregrineError } from '../errors.js';
import type { BlockManager } from '../kvcache/block-manager.js';
import { numPromptLogprobRows } from '../sampling/prompt-logprobs.js';
import type { SampleResult } from '../sampling/sampler.js';
import type { Sequence } from './sequence.js';

export interface SchedulerConfig {
  /** most sequences running at once */
  maxNumSeqs: number;
  /** token budget of one step (prefill chunks + decodes) */
  maxNumBatchedTokens: number;
  /** longest prompt + output a sequence may reach */
  maxModelLen: number;
  /** split prompts over steps; without it a prompt is admitted only when it fits the budget whole */
  enableChunkedPrefill: boolean;
  /** prompt-logprob logits rows of one step (default 0: requests asking for them never run) */
  maxNumPromptLogprobRows?: number;
}

export interface ScheduledEntry {
  readonly seq: Sequence;
  readonly numNewTokens: number;
}

export interface ScheduledBatch {
  readonly entries: ScheduledEntry[];
  readonly numBatchedTokens: number;
  /** sequences preempted in this step (now waiting, no blocks) */
  readonly preempted: Sequence[];
}

export class Scheduler {
  readonly config: Readonly<SchedulerConfig>;
  readonly blockManager: BlockManager;
  readonly waiting: Sequence[] = [];
  readonly running: Sequence[] = [];
  numPreemptions = 0;

  constructor(config: SchedulerConfig, blockManager: BlockManager) {
    for (const key of ['maxNumSeqs', 'maxNumBatchedTokens', 'maxModelLen'] as const) {
      if (!Number.isInteger(config[key]) || config[key] < 1) {
        throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `${key} must be a positive integer, got ${config[key]}`, { param: key });
      }
    }
    if (!config.enableChunkedPrefill && config.maxNumBatchedTokens < config.maxModelLen) {
      throw new PeregrineError(
        'PGN_ERR_INVALID_ARGUMENT',
        `without chunked prefill maxNumBatchedTokens (${config.maxNumBatchedTokens}) must be at least maxModelLen (${config.maxModelLen})`,
        { param: 'maxNumBatchedTokens' },
      );
    }
    this.config = { ...config };
    this.blockManager = blockManager;
  }

  get numWaiting(): number {
    return this.waiting.length;
  }

  get numRunning(): number {
    return this.running.length;
  }

  hasUnfinished(): boolean {
    return this.waiting.length > 0 || this.running.length > 0;
  }

  /**
   * Queues `seq`.
   * @throws PeregrineError PGN_ERR_PROMPT_TOO_LONG when the prompt exceeds maxModelLen;
   *   PGN_ERR_KV_CACHE_EXHAUSTED when prompt + max_tokens cannot fit the whole KV pool.
   */
  add(seq: Sequence): void {
    const { maxModelLen } = this.config;
    const { blockSize, numBlocks } = this.blockManager;
    const numPromptTokens = seq.numPromptTokens;
    if (numPromptTokens > maxModelLen) {
      throw new PeregrineError(
        'PGN_ERR_PROMPT_TOO_LONG',
        `prompt of request ${seq.requestId} has ${numPromptTokens} tokens, more than the maximum context length of ${maxModelLen}`,
        { requestId: seq.requestId, numPromptTokens, maxModelLen },
      );
    }
    // the last sampled token is never computed: a sequence ends holding maxLen - 1 tokens of KV
    const maxLen = Math.min(numPromptTokens + seq.params.maxTokens, maxModelLen);
    const numBlocksNeeded = Math.ceil(Math.max(numPromptTokens, maxLen - 1) / blockSize);
    if (numBlocksNeeded > numBlocks) {
      throw new PeregrineError(
        'PGN_ERR_KV_CACHE_EXHAUSTED',
        `request ${seq.requestId} may need ${numBlocksNeeded} KV blocks of ${blockSize} tokens ` +
          `(${numPromptTokens} prompt tokens + max_tokens ${seq.params.maxTokens}), but the KV cache holds ${numBlocks}`,
        { requestId: seq.requestId, numBlocksNeeded, numBlocks, blockSize },
      );
    }
    seq.status = 'waiting';
    this.waiting.push(seq);
  }

  /** Removes the sequence with `seqId` wherever it is and frees its blocks; returns it, or null if unknown. */
  abort(seqId: number): Sequence | null {
    const seq = this.running.find((s) => s.seqId === seqId) ?? this.waiting.find((s) => s.seqId === seqId);
    if (seq === undefined) return null;
    this.finish(seq);
    return seq;
  }

  schedule(): ScheduledBatch {
    const entries: ScheduledEntry[] = [];
    const preempted: Sequence[] = [];
    let budget = this.config.maxNumBatchedTokens;
    let promptRowBudget = this.config.maxNumPromptLogprobRows ?? 0;
    /** tokens of the next chunk of `seq`, capped by both budgets; 0: it cannot run this step */
    const chunk = (seq: Sequence): number => {
      const start = seq.numCachedTokens;
      const numNewTokens = Math.min(seq.numTokens - start, budget);
      const numRows = numPromptLogprobRows(seq.samplingState, start, numNewTokens);
      if (numRows <= promptRowBudget) {
        promptRowBudget -= numRows;
        return numNewTokens;
      }
      // every token of a chunk cut short needs a row
      const n = promptRowBudget;
      promptRowBudget = 0;
      return n;
    };

    for (let i = 0; i < this.running.length && budget > 0; i++) {
      const seq = this.running[i];
      if (this.finishesByCount(seq)) continue;
      while (!this.blockManager.canAppend(seq)) {
        const victim = this.running.pop() as Sequence;
        this.preempt(victim);
        preempted.push(victim);
        if (victim === seq) break;
      }
      if (seq.status !== 'running') break;
      this.blockManager.appendSlot(seq);
      const numNewTokens = chunk(seq);
      if (numNewTokens === 0) continue;
      entries.push({ seq, numNewTokens });
      budget -= numNewTokens;
    }

    if (preempted.length === 0) {
      while (this.waiting.length > 0 && budget > 0 && this.running.length < this.config.maxNumSeqs) {
        const seq = this.waiting[0];
        if (seq.numPendingTokens > 0) break; // preempted while its step runs: readmitted once its token is in
        if (!this.config.enableChunkedPrefill && seq.numTokens > budget) break;
        // as vLLM: prompt logprobs need the whole prompt computed, so no prefix-cache hits
        const reusePrefix = seq.params.promptLogprobs === null;
        if (!this.blockManager.canAllocate(seq, reusePrefix)) break;
        if (promptRowBudget === 0 && numPromptLogprobRows(seq.samplingState, 0, seq.numTokens) > 0) break;
        this.blockManager.allocate(seq, reusePrefix);
        if (seq.numPreemptions === 0) seq.numCachedPromptTokens = seq.numCachedTokens;
        this.waiting.shift();
        seq.status = 'running';
        this.running.push(seq);
        const numNewTokens = chunk(seq);
        entries.push({ seq, numNewTokens });
        budget -= numNewTokens;
      }
    }
    return { entries, numBatchedTokens: this.config.maxNumBatchedTokens - budget, preempted };
  }

  /**
   * Advances each entry's computed tokens, registers newly full blocks for prefix reuse
   * and appends the sampled tokens. `results[i]` belongs to `batch.entries[i]`: a
   * SampleResult where the entry reaches the end of its sequence, null elsewhere.
   */
  postprocess(batch: ScheduledBatch, results: ReadonlyArray<SampleResult | null>): void {
    this.appendSampled(batch, this.markComputed(batch), results);
  }

  /**
   * The first half of postprocess (async scheduling: at launch): advances each entry's computed
   * tokens and registers newly full blocks. Returns which entries sample.
   */
  markComputed(batch: ScheduledBatch): boolean[] {
    return batch.entries.map(({ seq, numNewTokens }) => {
      if (seq.status !== 'running') return false; // aborted while the step ran
      seq.numCachedTokens += numNewTokens;
      this.blockManager.cacheFullBlocks(seq);
      return seq.numCachedTokens === seq.numTokens;
    });
  }

  /**
   * The second half (async scheduling: once the step is collected): appends each sampled token,
   * or fills its placeholder, for the sequences not finished meanwhile (a sequence preempted
   * since still gets its token). `samples` is what markComputed returned.
   */
  appendSampled(batch: ScheduledBatch, samples: readonly boolean[], results: ReadonlyArray<SampleResult | null>): void {
    if (results.length !== batch.entries.length) {
      throw new PeregrineError('PGN_ERR_INTERNAL', `executor returned ${results.length} results for ${batch.entries.length} scheduled sequences`);
    }
    batch.entries.forEach(({ seq }, i) => {
      if (seq.status === 'finished') return;
      const result = results[i];
      if (samples[i] !== (result != null)) {
        throw new PeregrineError(
          'PGN_ERR_INTERNAL',
          `executor ${samples[i] ? 'returned no token' : 'sampled a token'} for request ${seq.requestId} at ${seq.numCachedTokens}/${seq.numTokens} tokens`,
        );
      }
      if (result == null) return;
      if (seq.numPendingTokens > 0) {
        seq.fillPlaceholder(result.tokenId);
        this.blockManager.cacheFullBlocks(seq);
      } else {
        seq.appendToken(result.tokenId);
      }
    });
  }

  /**
   * A sequence whose last token is pending and whose finish is already known by count: it
   * reaches max_tokens or the context length with that token (StopChecker's 'length').
   */
  private finishesByCount(seq: Sequence): boolean {
    if (seq.numPendingTokens === 0) return false;
    return seq.numOutputTokens + seq.numPendingTokens >= seq.params.maxTokens || seq.numTokens >= this.config.maxModelLen;
  }

  /** Frees the blocks of `seq` and drops it from the queues. */
  finish(seq: Sequence): void {
    removeFrom(this.running, seq) || removeFrom(this.waiting, seq);
    this.blockManager.free(seq);
    seq.status = 'finished';
  }

  /** Recompute preemption: blocks freed, cached tokens reset; outputs stay, so the re-prefill covers prompt + outputs. */
  private preempt(seq: Sequence): void {
    this.blockManager.free(seq);
    seq.status = 'waiting';
    this.waiting.unshift(seq);
    seq.numPreemptions++;
    this.numPreemptions++;
  }
}

function removeFrom(list: Sequence[], seq: Sequence): boolean {
  const i = list.indexOf(seq);
  if (i < 0) return false;
  list.splice(i, 1);
  return true;
}
