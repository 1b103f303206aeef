/**
 * Prompt logprobs (vLLM's `prompt_logprobs`): for prompt position p >= 1, the raw logprob of
 * prompt token p given tokens < p, and the top-n alternatives; position 0 has none. The logits
 * row of position q scores token q + 1, so a prefill chunk over positions [start, end) yields
 * the prompt logprobs of positions [start + 1, min(end, numPromptTokens)).
 */
import { computeLogprobs, type SequenceSamplingState, type TokenLogprob } from './sampler.js';

export interface PromptLogprob {
  tokenId: number;
  logprob: number;
  /** top-n alternatives, best first (n = params.promptLogprobs) */
  topLogprobs: TokenLogprob[];
}

/**
 * Logits rows a chunk over positions [start, start + numNewTokens) needs for prompt logprobs:
 * one per position below numPromptTokens - 1 (the last prompt position samples instead).
 * 0 unless the request asks for them and has no output yet (a preempted one emitted them already).
 */
export function numPromptLogprobRows(state: SequenceSamplingState, start: number, numNewTokens: number): number {
  if (state.params.promptLogprobs === null || state.outputTokenIds.length > 0) return 0;
  return Math.max(0, Math.min(start + numNewTokens, state.promptTokenIds.length - 1) - start);
}

/**
 * The prompt logprobs of positions start + 1 .. start + numRows from `logits`, f32
 * [numRows, vocab] holding the rows of positions start .. start + numRows - 1.
 */
export function computePromptLogprobs(logits: Float32Array, state: SequenceSamplingState, start: number, numRows: number): PromptLogprob[] {
  const vocab = logits.length / numRows;
  const topN = state.params.promptLogprobs ?? 0;
  const out: PromptLogprob[] = [];
  for (let r = 0; r < numRows; r++) {
    const tokenId = state.promptTokenIds[start + r + 1]!;
    out.push({ tokenId, ...computeLogprobs(logits.subarray(r * vocab, (r + 1) * vocab), tokenId, topN) });
  }
  return out;
}
