/**
 * What the engine needs from whatever runs the model: one forward pass over a scheduled
 * batch, with sampling. The runner behind it owns the KV pool the block ids index.
 *
 * Async scheduling (optional: `launch`): the engine queues step n+1 before step n's sampled
 * tokens are back. A sequence whose last token is still being sampled holds a placeholder
 * there (`placeholderToken(row)`: row `row` of the previous launch's sampled ids, the k-th
 * sampling entry of a launch being row k); the executor reads it on the device.
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

/** The token id standing for row `row` of the previous launch's sampled ids (always < 0). */
export function placeholderToken(row: number): number {
  return -1 - row;
}

/** The sampled-ids row a placeholder token stands for; -1 for a real token id. */
export function placeholderRow(tokenId: number): number {
  return tokenId < 0 ? -1 - tokenId : -1;
}

/** A step queued by `launch`; its results come later. */
export interface LaunchedStep {
  /** Resolves with the step's results once the device has run it (call once, in launch order). */
  collect(): Promise<ExecuteResults>;
}

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

  /**
   * Async scheduling: `execute` split in two. Resolves once the step is queued, before its
   * tokens are sampled; token ids < 0 in an entry's range are placeholders (see above). At most
   * two launches are uncollected at a time.
   */
  launch?(batch: ScheduledBatch): Promise<LaunchedStep>;
  /** Whether `launch` can run `batch` (rows whose sampling reads the token history, prompt logprobs and the like cannot). */
  canLaunch?(batch: ScheduledBatch): boolean;
}
