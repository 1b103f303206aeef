/**
 * CPU logits processors, in the order the sampler applies them (vLLM's):
 * min-tokens mask -> repetition penalty -> presence/frequency penalties -> temperature ->
 * top-k -> (softmax) -> top-p -> min-p. Each works in place on one row.
 */
import type { SamplingParams } from './params.js';

/** The token history the penalties read. `outputTokenIds` must only grow (append-only). */
export interface TokenHistory {
  readonly promptTokenIds: ArrayLike<number>;
  readonly outputTokenIds: ArrayLike<number>;
}

/** Set the logits of `tokenIds` to -Infinity (ids outside the row are ignored). */
export function maskTokens(x: Float32Array, tokenIds: Iterable<number>): void {
  for (const id of tokenIds) if (id >= 0 && id < x.length) x[id] = -Infinity;
}

export function hasPenalties(p: SamplingParams): boolean {
  return p.repetitionPenalty !== 1 || p.presencePenalty !== 0 || p.frequencyPenalty !== 0;
}

/** Whether sampling `state` reads its token history this step: penalties, or a min_tokens mask still on. */
export function readsTokenHistory(state: { readonly params: SamplingParams; readonly outputTokenIds: ArrayLike<number> }): boolean {
  return hasPenalties(state.params) || state.outputTokenIds.length < state.params.minTokens;
}

/** Token statistics of one sequence, kept between steps so a step costs O(new tokens + distinct tokens). */
interface PenaltyStats {
  prompt: ArrayLike<number>;
  numPromptTokens: number;
  numOutputTokens: number;
  /** distinct ids in prompt + output */
  seen: Set<number>;
  /** id -> occurrences in the output */
  outputCounts: Map<number, number>;
}

const statsByHistory = new WeakMap<TokenHistory, PenaltyStats>();

function penaltyStats(h: TokenHistory): PenaltyStats {
  let s = statsByHistory.get(h);
  const out = h.outputTokenIds;
  if (!s || s.prompt !== h.promptTokenIds || s.numPromptTokens !== h.promptTokenIds.length || out.length < s.numOutputTokens) {
    s = { prompt: h.promptTokenIds, numPromptTokens: h.promptTokenIds.length, numOutputTokens: 0, seen: new Set(), outputCounts: new Map() };
    for (let i = 0; i < s.numPromptTokens; i++) s.seen.add(s.prompt[i]!);
    statsByHistory.set(h, s);
  }
  for (let i = s.numOutputTokens; i < out.length; i++) {
    const id = out[i]!;
    s.seen.add(id);
    s.outputCounts.set(id, (s.outputCounts.get(id) ?? 0) + 1);
  }
  s.numOutputTokens = out.length;
  return s;
}

/**
 * Repetition penalty over prompt + output tokens (positive logits divided, negative
 * multiplied, as HF/vLLM), then `logit -= presence * (count > 0) + frequency * count`
 * over output tokens only.
 */
export function applyPenalties(x: Float32Array, p: SamplingParams, history: TokenHistory): void {
  const s = penaltyStats(history);
  const rep = p.repetitionPenalty;
  const n = x.length;
  if (rep !== 1) {
    for (const id of s.seen) {
      if (id < 0 || id >= n) continue;
      const v = x[id]!;
      x[id] = v > 0 ? v / rep : v * rep;
    }
  }
  if (p.presencePenalty !== 0 || p.frequencyPenalty !== 0) {
    for (const [id, count] of s.outputCounts) {
      if (id < 0 || id >= n) continue;
      x[id] = x[id]! - (p.frequencyPenalty * count + p.presencePenalty);
    }
  }
}

export function applyTemperature(x: Float32Array, temperature: number): void {
  if (temperature === 1) return;
  for (let i = 0; i < x.length; i++) x[i] = x[i]! / temperature;
}

/** Index of the largest value (ties: lowest id); -1 when every value is -Infinity or NaN. */
export function argmax(x: Float32Array): number {
  let best = -1;
  let bestValue = -Infinity;
  for (let i = 0; i < x.length; i++) {
    const v = x[i]!;
    if (v > bestValue) {
      bestValue = v;
      best = i;
    }
  }
  return best;
}

/**
 * x <- exp(x - max(x)): unnormalised probabilities whose largest entry is exactly 1.
 * Returns their sum (NaN if x holds NaN; 0 if x is all -Infinity).
 */
export function expShiftedInPlace(x: Float32Array): number {
  let m = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i]! > m) m = x[i]!;
  if (m === -Infinity) return 0;
  let total = 0;
  for (let i = 0; i < x.length; i++) {
    const e = Math.exp(x[i]! - m);
    x[i] = e;
    total += e;
  }
  return total;
}

/**
 * Min-p over unnormalised weights whose largest entry is 1: zero weights below `minP`
 * (i.e. p < minP * pmax). Returns the kept mass.
 */
export function maskBelowMinP(w: Float32Array, minP: number): number {
  let kept = 0;
  for (let i = 0; i < w.length; i++) {
    const v = w[i]!;
    if (v < minP) w[i] = 0;
    else kept += v;
  }
  return kept;
}
