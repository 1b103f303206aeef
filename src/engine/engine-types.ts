/** The engine's public shapes: its options, what a request brings, what a step reports, its counters. */
import type { SamplingParams } from '../sampling/params.js';
import type { PromptLogprob } from '../sampling/prompt-logprobs.js';
import type { SampleResult } from '../sampling/sampler.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import type { FinishReason } from './stop-checker.js';

export const DEFAULT_MAX_NUM_SEQS = 256;
export const DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192;

export interface LLMEngineOptions {
  /** detokenizes outputs; without one every text field is '' */
  tokenizer?: Tokenizer | null;
  /** default {@link DEFAULT_MAX_NUM_SEQS} */
  maxNumSeqs?: number;
  /** default {@link DEFAULT_MAX_NUM_BATCHED_TOKENS} */
  maxNumBatchedTokens?: number;
  /** default true */
  enablePrefixCaching?: boolean;
  /** default true */
  enableChunkedPrefill?: boolean;
  /** requests allowed to wait for admission; more throw PGN_ERR_QUEUE_FULL (default unlimited) */
  maxWaiting?: number;
  /**
   * launch step n+1 before step n's tokens are back, where the executor can (`launch`); default
   * false here (LLM turns it on for CUDA). Env PEREGRINE_ASYNC_SCHEDULING=0 turns it off.
   */
  asyncScheduling?: boolean;
}

export interface AddRequestInit {
  requestId: string;
  promptTokenIds: readonly number[];
  params: SamplingParams;
  /** added to params.seed (the n-th choice of a request uses n) */
  seedOffset?: number;
  /** ms, performance.now() clock */
  arrivalTime?: number;
}

/** What one step reports for one request. */
export interface RequestOutput {
  requestId: string;
  /** tokens sampled in this step */
  newTokenIds: number[];
  /** text released in this step ('' without a tokenizer, or while a stop string may be forming) */
  newText: string;
  /** one per new token when params.logprobs is set, else null */
  newLogprobs: SampleResult[] | null;
  /**
   * on the first output of a request with params.promptLogprobs set: one per prompt token, null
   * for the first (nothing precedes it); else null
   */
  promptLogprobs: Array<PromptLogprob | null> | null;
  finished: boolean;
  finishReason: FinishReason | null;
  /** the stop string or token id that ended the sequence */
  stopReason: string | number | null;
  numPromptTokens: number;
  /** prompt tokens found in the prefix cache when the request was admitted */
  numCachedPromptTokens: number;
  /** every output token so far */
  outputTokenIds: number[];
}

export interface EngineStats {
  numRunning: number;
  numWaiting: number;
  numKvBlocksTotal: number;
  numKvBlocksUsed: number;
  /** empty blocks; cached ones can be taken too (used + free + cached = total) */
  numKvBlocksFree: number;
  /** unreferenced blocks kept for prefix reuse, evicted LRU when free ones run out */
  numKvBlocksCached: number;
  prefixCacheHitRate: number;
  numPreemptions: number;
  /** prompt tokens of requests that produced their first token */
  numPromptTokens: number;
  numGeneratedTokens: number;
}
