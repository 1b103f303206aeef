/**
 * The CPU sampler: one logits row in, one token (and its logprobs) out.
 *
 * Semantics (vLLM's; the CUDA sampling kernels follow them):
 * - logprobs are the raw model log-softmax, before any penalty or temperature;
 * - below `minTokens` outputs, eos and stop token ids are masked;
 * - repetition penalty over prompt + output, presence/frequency over output;
 * - temperature < SAMPLING_EPS: argmax of the penalised logits (ties: lowest id);
 * - otherwise logits / temperature, top-k (exactly k, ties to the lowest ids), softmax,
 *   top-p (smallest set with mass >= topP), min-p (p >= minP * pmax), then one uniform
 *   draw u from the sequence's Rng picks the first token, in id order, whose cumulative
 *   kept mass exceeds u * (kept mass).
 * Cost: O(vocab) passes, no sort of the vocab (top-k/top-p/top-n use radix selection).
 */
import { PeregrineError } from '../errors.js';
import {
  applyPenalties,
  applyTemperature,
  argmax,
  expShiftedInPlace,
  hasPenalties,
  maskBelowMinP,
  maskTokens,
} from './logits-processors.js';
import { isGreedy, type SamplingParams } from './params.js';
import { Rng } from './rng.js';
import { maskOutsideTopK, maskOutsideTopP, selectTopK } from './select.js';

export interface TokenLogprob {
  tokenId: number;
  logprob: number;
}

export interface SampleResult {
  tokenId: number;
  /** raw log-softmax of the chosen token; NaN when `params.logprobs` is null (not computed) */
  logprob: number;
  /** top-n alternatives by raw logprob, best first; [] for logprobs = 0; null when logprobs is null */
  topLogprobs: TokenLogprob[] | null;
}

export interface SequenceSamplingState {
  readonly params: SamplingParams;
  readonly promptTokenIds: ArrayLike<number>;
  /** append-only: the penalties keep counts between steps */
  readonly outputTokenIds: ArrayLike<number>;
  /** null: one is drawn from OS entropy when first needed */
  rng: Rng | null;
  /** masked, with `params.stopTokenIds`, while fewer than `params.minTokens` outputs exist */
  readonly eosTokenIds?: readonly number[];
}

/**
 * The per-sequence sampling state. The Rng is seeded with `params.seed + seedOffset`
 * (the n-th choice of a request uses offset n, as vLLM), or from OS entropy when seed is null.
 */
export function createSamplingState(
  params: SamplingParams,
  promptTokenIds: ArrayLike<number>,
  outputTokenIds: ArrayLike<number>,
  seedOffset = 0,
  eosTokenIds: readonly number[] = [],
): SequenceSamplingState {
  const rng = params.seed === null ? Rng.fromEntropy() : new Rng(params.seed + seedOffset);
  return { params, promptTokenIds, outputTokenIds, rng, eosTokenIds };
}

/**
 * Sample one token from one logits row.
 *
 * @param logits f32 [vocab], not modified
 * @param state the sequence's params, token history and Rng (advanced by one draw unless greedy)
 * @param scratch f32 of at least vocab entries to work in; allocated when absent
 * @throws PeregrineError `PGN_ERR_INTERNAL` when no token can be sampled (all -inf or NaN logits)
 */
export function sampleRow(logits: Float32Array, state: SequenceSamplingState, scratch?: Float32Array): SampleResult {
  const p = state.params;
  const vocab = logits.length;
  const greedy = isGreedy(p);
  const maskStops = state.outputTokenIds.length < p.minTokens;
  const penalise = hasPenalties(p);

  let x = logits;
  if (!greedy || maskStops || penalise) {
    x = scratch && scratch.length >= vocab ? scratch.subarray(0, vocab) : new Float32Array(vocab);
    x.set(logits);
    if (maskStops) {
      maskTokens(x, state.eosTokenIds ?? []);
      maskTokens(x, p.stopTokenIds);
    }
    if (penalise) applyPenalties(x, p, state);
  }

  const tokenId = greedy ? argmax(x) : sampleProcessed(x, p, state);
  if (tokenId < 0) noToken(vocab);
  if (p.logprobs === null) return { tokenId, logprob: Number.NaN, topLogprobs: null };
  const { logprob, topLogprobs } = computeLogprobs(logits, tokenId, p.logprobs);
  return { tokenId, logprob, topLogprobs };
}

/** Temperature, top-k, top-p, min-p and one draw; x is overwritten. */
function sampleProcessed(x: Float32Array, p: SamplingParams, state: SequenceSamplingState): number {
  applyTemperature(x, p.temperature);
  maskOutsideTopK(x, p.topK);
  let mass = expShiftedInPlace(x);
  if (!(mass > 0)) return -1;
  if (p.topP < 1) mass = maskOutsideTopP(x, p.topP);
  if (p.minP > 0) mass = maskBelowMinP(x, p.minP);
  state.rng ??= Rng.fromEntropy();
  return drawIndex(x, mass, state.rng.nextFloat());
}

/** The first index, in id order, whose cumulative weight exceeds u * mass. */
function drawIndex(w: Float32Array, mass: number, u: number): number {
  const target = u * mass;
  let cum = 0;
  let last = -1;
  for (let i = 0; i < w.length; i++) {
    const v = w[i]!;
    if (v <= 0) continue;
    cum += v;
    last = i;
    if (cum > target) return i;
  }
  return last; // rounding left target at the very end of the mass
}

/**
 * Raw log-softmax of `tokenId` and the `topN` best alternatives (best first, ties to the lowest id).
 * Also serves prompt logprobs.
 */
export function computeLogprobs(logits: Float32Array, tokenId: number, topN: number): { logprob: number; topLogprobs: TokenLogprob[] } {
  const lse = logSumExp(logits);
  const topLogprobs: TokenLogprob[] = [];
  if (topN > 0) {
    for (const id of selectTopK(logits, topN)) topLogprobs.push({ tokenId: id, logprob: logits[id]! - lse });
  }
  return { logprob: logits[tokenId]! - lse, topLogprobs };
}

export function logSumExp(x: Float32Array): number {
  let m = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i]! > m) m = x[i]!;
  if (m === -Infinity) return -Infinity;
  let sum = 0;
  for (let i = 0; i < x.length; i++) sum += Math.exp(x[i]! - m);
  return m + Math.log(sum);
}

function noToken(vocab: number): never {
  throw new PeregrineError('PGN_ERR_INTERNAL', `cannot sample: every logit in the row of ${vocab} is -inf or NaN`, { vocab });
}
