/** The public result types of the library API. */
import type { FinishReason } from '../engine/stop-checker.js';

export interface TokenLogprob {
  readonly tokenId: number;
  /** the token's text, when the model has a tokenizer */
  readonly token: string | null;
  readonly logprob: number;
}

export interface OutputLogprob extends TokenLogprob {
  /** the top-n alternatives, best first (n = SamplingParams.logprobs) */
  readonly topLogprobs: readonly TokenLogprob[];
}

/** One of the `n` completions of a request. */
export interface CompletionOutput {
  readonly index: number;
  readonly text: string;
  readonly tokenIds: readonly number[];
  readonly finishReason: FinishReason | null;
  /** the stop string or stop token id that ended it, if any */
  readonly stopReason: string | number | null;
  readonly logprobs: readonly OutputLogprob[] | null;
  readonly cumulativeLogprob: number | null;
}

export interface RequestOutput {
  readonly requestId: string;
  readonly prompt: string | null;
  readonly promptTokenIds: readonly number[];
  /** prompt tokens whose KV came from the prefix cache */
  readonly numCachedTokens: number;
  /**
   * with SamplingParams.promptLogprobs = n: per prompt token, its logprob given the tokens before
   * it and the top-n alternatives; null for the first token; null when not asked for
   */
  readonly promptLogprobs: ReadonlyArray<OutputLogprob | null> | null;
  readonly outputs: readonly CompletionOutput[];
  readonly finished: boolean;
}

/** One streamed increment of one completion. */
export interface StreamDelta {
  readonly requestId: string;
  readonly index: number;
  readonly text: string;
  readonly tokenIds: readonly number[];
  readonly logprobs: readonly OutputLogprob[] | null;
  /** on the first delta of a completion whose request asked for prompt logprobs (see RequestOutput) */
  readonly promptLogprobs?: ReadonlyArray<OutputLogprob | null> | null;
  readonly finished: boolean;
  readonly finishReason: FinishReason | null;
  readonly stopReason: string | number | null;
}
