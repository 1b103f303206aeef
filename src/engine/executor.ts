/**
 * What the engine needs from whatever runs the model: one forward pass over a scheduled
 * batch, with sampling. The runner behind it owns the KV pool the block ids index.
 */
import type { PromptLogprob } from '../sampling/prompt-logprobs.js';
import type { SampleResult } from '../sampling/sampler.js';
import type { ScheduledBatch } from './scheduler.js';

/**
 * One result per entry: the sampled token, or null where the entry does not sample. An entry
 * of a request asking for prompt logprobs may also get, at the same index of `promptLogprobs`,
 * those of positions [start + 1, start + k] of its chunk (start = seq.numCachedTokens).
 */
export type ExecuteResults = Array<SampleResult | null> & { promptLogprobs?: Array<PromptLogprob[] | null> };

export interface ModelExecutor {
  /** tokens per KV block */
  readonly blockSize: number;
  /** blocks in the KV pool */
  readonly numBlocks: number;
  /** longest prompt + output the model takes */
  readonly maxModelLen: number;
  /** tokens that end generation unless params.ignoreEos */
  readonly eosTokenIds: readonly number[];
  /** prompt-logprob rows one step can return (absent: prompt logprobs are not computed) */
  readonly maxNumPromptLogprobRows?: number;

  /**
   * Runs entry i over tokens [seq.numCachedTokens, seq.numCachedTokens + numNewTokens) of
   * seq.tokenIds, writing their KV into the slots of seq.blockTable, and samples with
   * seq.samplingState where the range reaches seq.numTokens.
   * @returns one result per entry (see {@link ExecuteResults})
   */
  execute(batch: ScheduledBatch): Promise<ExecuteResults>;
}
