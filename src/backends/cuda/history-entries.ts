/**
 * The (id, output count) pairs a penalized row uploads each step (kernels/penalties.cuh), kept
 * per sequence between steps: a step costs O(new output tokens) plus one copy of the pairs,
 * not a walk over the whole history. The same ids and counts as the CPU's applyPenalties reads:
 * with a repetition penalty, every distinct prompt + output id (count 0 for prompt-only ids);
 * without, the distinct output ids.
 */
import type { SequenceSamplingState } from '../../sampling/sampler.js';

interface HistoryEntries {
  prompt: ArrayLike<number>;
  numPromptTokens: number;
  numOutputTokens: number;
  withPrompt: boolean;
  /** [id, count] per distinct id, first-seen order; capacity grows by doubling */
  pairs: Int32Array;
  numPairs: number;
  /** id -> its pair's index */
  index: Map<number, number>;
}

const entriesByState = new WeakMap<SequenceSamplingState, HistoryEntries>();

/** Whether `id` can be sent as an i32 (others lie outside every vocab: the CPU ignores them too). */
export function isTokenWord(id: number): boolean {
  return Number.isInteger(id) && id >= 0 && id <= 0x7fffffff;
}

/** The state's pairs as i32 words [id0, count0, id1, count1, ...] (a view: copy it before the next step). */
export function historyPairs(state: SequenceSamplingState): Int32Array {
  const withPrompt = state.params.repetitionPenalty !== 1;
  const prompt = state.promptTokenIds, out = state.outputTokenIds;
  let e = entriesByState.get(state);
  if (!e || e.prompt !== prompt || e.numPromptTokens !== prompt.length || out.length < e.numOutputTokens || e.withPrompt !== withPrompt) {
    e = { prompt, numPromptTokens: prompt.length, numOutputTokens: 0, withPrompt, pairs: new Int32Array(16), numPairs: 0, index: new Map() };
    if (withPrompt) for (let i = 0; i < prompt.length; i++) see(e, prompt[i]!, 0);
    entriesByState.set(state, e);
  }
  for (let i = e.numOutputTokens; i < out.length; i++) see(e, out[i]!, 1);
  e.numOutputTokens = out.length;
  return e.pairs.subarray(0, 2 * e.numPairs);
}

function see(e: HistoryEntries, id: number, count: number): void {
  if (!isTokenWord(id)) return;
  const at = e.index.get(id);
  if (at !== undefined) {
    e.pairs[2 * at + 1]! += count;
    return;
  }
  if (2 * e.numPairs + 2 > e.pairs.length) {
    const grown = new Int32Array(2 * e.pairs.length);
    grown.set(e.pairs);
    e.pairs = grown;
  }
  e.index.set(id, e.numPairs);
  e.pairs[2 * e.numPairs] = id;
  e.pairs[2 * e.numPairs + 1] = count;
  e.numPairs++;
}
