/**
 * What the engine needs from whatever runs the model: one forward pass over a scheduled
 * batch, with sampling. The runner behind it owns the KV pool the block ids index.
 */
import type { SampleResult } from '../sampling/sampler.js';
import type { ScheduledBatch } from './scheduler.js';

export interface ModelExecutor {
  /** tokens per KV block */
  readonly blockSize: number;
  /** blocks in the KV pool */
  readonly numBlocks: number;
  /** longest prompt + output the model takes */
  readonly maxModelLen: number;
  /** tokens that end generation unless params.ignoreEos */
  readonly eosTokenIds: readonly number[];

  /**
   * Runs entry i over tokens [seq.numCachedTokens, seq.numCachedTokens + numNewTokens) of
   * seq.tokenIds, writing their KV into the slots of seq.blockTable, and samples with
   * seq.samplingState where the range reaches seq.numTokens.
   * @returns one result per entry: the sampled token, or null where the entry does not sample
   */
  execute(batch: ScheduledBatch): Promise<Array<SampleResult | null>>;
}
