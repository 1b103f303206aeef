/** Prompt-logprob rows of a step: extra logits rows after the sampling rows, and their split per entry. */
import { computePromptLogprobs, numPromptLogprobRows, type PromptLogprob } from '../sampling/index.js';
import type { ForwardBatch } from './forward-batch.js';
import type { RunnerEntry } from './model-runner.js';

/**
 * `fb` with one more logits row per prompt position whose next token wants a prompt logprob
 * (after the sampling rows, in entry order). Decode steps get none, so they stay graphable.
 */
export function withPromptLogprobRows(fb: ForwardBatch, entries: readonly RunnerEntry[]): ForwardBatch {
  const extra: number[] = [];
  entries.forEach((e, s) => {
    const n = numPromptLogprobRows(e.seq.samplingState, e.seq.numCachedTokens, e.numNewTokens);
    for (let r = 0; r < n; r++) extra.push(fb.cuSeqlensQ[s]! + r);
  });
  if (extra.length === 0) return fb;
  return { ...fb, logitsIndices: Int32Array.from([...fb.logitsIndices, ...extra]) };
}

/** Splits prompt-logprob rows (f32 [rows, vocab], in entry order) into each entry's prompt logprobs. */
export function promptLogprobs(rows: Float32Array, entries: readonly RunnerEntry[], vocab: number): Array<PromptLogprob[] | null> {
  let row = 0;
  return entries.map((e) => {
    const { samplingState, numCachedTokens } = e.seq;
    const n = numPromptLogprobRows(samplingState, numCachedTokens, e.numNewTokens);
    if (n === 0) return null;
    const out = computePromptLogprobs(rows.subarray(row * vocab, (row + n) * vocab), samplingState, numCachedTokens, n);
    row += n;
    return out;
  });
}
