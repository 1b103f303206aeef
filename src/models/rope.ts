/**
 * RoPE frequency tables and ALiBi slopes.
 * Follows transformers' `modeling_rope_utils.py` (5.x): `_compute_default_rope_parameters`,
 * `_compute_linear_scaling_rope_parameters`, `_compute_dynamic_ntk_parameters`,
 * `_compute_llama3_parameters`, `_compute_yarn_parameters`. Math is done in f64 (HF uses f32);
 * the table is rounded to f32 once at the end.
 *
 * Dynamic NTK: HF recomputes the base from the current sequence length whenever it exceeds
 * `max_position_embeddings`, and uses plain RoPE below it. A paged KV cache needs one fixed
 * table, so, like vLLM, the scaled base is computed once for a fixed length (`maxPositions`):
 *   base' = theta * (factor * maxPositions / original - (factor - 1)) ^ (dim / (dim - 2)).
 * Unlike vLLM (which uses base' for every row), rows p < original use the default frequencies,
 * so every sequence that fits the pre-training context gets exactly HF's (and the
 * checkpoint's) RoPE; rows beyond it use base'. This is what HF's own cached generation
 * produces (keys written before the context outgrew `original` keep their default rotation),
 * with base' frozen at `maxPositions` instead of growing with the sequence.
 */
import type { RopeSpec } from './spec.js';

/** inverse frequencies theta^(-2i/dim), i < dim/2 */
function defaultInvFreq(theta: number, dim: number): Float64Array {
  const invFreq = new Float64Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) invFreq[i] = 1 / theta ** ((2 * i) / dim);
  return invFreq;
}

/** `_compute_llama3_parameters`: keep high frequencies, divide low ones by `factor`, blend between. */
function llama3InvFreq(rope: RopeSpec): Float64Array {
  const factor = rope.factor;
  const low = required(rope.lowFreqFactor, 'lowFreqFactor');
  const high = required(rope.highFreqFactor, 'highFreqFactor');
  const oldContextLen = required(rope.originalMaxPositionEmbeddings, 'originalMaxPositionEmbeddings');
  const lowFreqWavelen = oldContextLen / low;
  const highFreqWavelen = oldContextLen / high;
  const invFreq = defaultInvFreq(rope.theta, rope.rotaryDim);
  for (let i = 0; i < invFreq.length; i++) {
    const f = invFreq[i]!;
    const wavelen = (2 * Math.PI) / f;
    if (wavelen > lowFreqWavelen) {
      invFreq[i] = f / factor;
    } else if (wavelen >= highFreqWavelen) {
      const smooth = (oldContextLen / wavelen - low) / (high - low);
      invFreq[i] = (1 - smooth) * (f / factor) + smooth * f;
    }
  }
  return invFreq;
}

function yarnMscale(scale: number, mscale = 1): number {
  return scale <= 1 ? 1 : 0.1 * mscale * Math.log(scale) + 1;
}

/** `_compute_yarn_parameters`: ramp between interpolated (/factor) and original frequencies. */
function yarn(rope: RopeSpec): { invFreq: Float64Array; attentionScaling: number } {
  const { theta, rotaryDim: dim, factor } = rope;
  const original = required(rope.originalMaxPositionEmbeddings, 'originalMaxPositionEmbeddings');
  const betaFast = rope.betaFast || 32;
  const betaSlow = rope.betaSlow || 1;
  const truncate = rope.truncate ?? true;

  let attentionScaling = rope.attentionFactor;
  if (attentionScaling === undefined) {
    attentionScaling = rope.mscale && rope.mscaleAllDim
      ? yarnMscale(factor, rope.mscale) / yarnMscale(factor, rope.mscaleAllDim)
      : yarnMscale(factor);
  }

  // dimension index at which a frequency completes `numRotations` turns over the original context
  const correctionDim = (numRotations: number): number =>
    (dim * Math.log(original / (numRotations * 2 * Math.PI))) / (2 * Math.log(theta));
  let low = correctionDim(betaFast);
  let high = correctionDim(betaSlow);
  if (truncate) {
    low = Math.floor(low);
    high = Math.ceil(high);
  }
  low = Math.max(low, 0);
  high = Math.min(high, dim - 1);
  if (low === high) high += 0.001; // HF: prevent singularity

  const invFreq = new Float64Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) {
    const posFreq = theta ** ((2 * i) / dim);
    const ramp = Math.min(Math.max((i - low) / (high - low), 0), 1);
    const extrapolationFactor = 1 - ramp;
    invFreq[i] = (1 / (factor * posFreq)) * (1 - extrapolationFactor) + (1 / posFreq) * extrapolationFactor;
  }
  return { invFreq, attentionScaling };
}

/** dynamic NTK base for a fixed sequence length (HF's formula with seq_len = max(seqLen, original)) */
function dynamicInvFreq(rope: RopeSpec, seqLen: number): Float64Array {
  const dim = rope.rotaryDim;
  const original = required(rope.originalMaxPositionEmbeddings, 'originalMaxPositionEmbeddings');
  const len = Math.max(seqLen, original);
  const base = rope.theta * ((rope.factor * len) / original - (rope.factor - 1)) ** (dim / (dim - 2));
  return defaultInvFreq(base, dim);
}

function required(v: number | undefined, name: string): number {
  if (v === undefined) throw new TypeError(`RopeSpec.${name} is required for this RoPE type`);
  return v;
}

/**
 * Inverse frequencies (length rotaryDim/2) and the factor cos/sin are multiplied by.
 * `maxPositions` matters only for dynamic NTK (the fixed length the scaled base is computed for;
 * see the file comment); at or below `originalMaxPositionEmbeddings` it gives default RoPE.
 */
export function computeInvFreq(rope: RopeSpec, maxPositions: number): { invFreq: Float64Array; attentionScaling: number } {
  switch (rope.type) {
    case 'default':
      return { invFreq: defaultInvFreq(rope.theta, rope.rotaryDim), attentionScaling: 1 };
    case 'linear':
      return { invFreq: defaultInvFreq(rope.theta, rope.rotaryDim).map((f) => f / rope.factor), attentionScaling: 1 };
    case 'dynamic':
      return { invFreq: dynamicInvFreq(rope, maxPositions), attentionScaling: 1 };
    case 'llama3':
      return { invFreq: llama3InvFreq(rope), attentionScaling: 1 };
    case 'yarn':
      return yarn(rope);
  }
}

/**
 * f32 [maxPositions, rotaryDim]: row p = cos(p*invFreq[j]) * s for j < rotaryDim/2, then
 * sin(p*invFreq[j]) * s, s = attentionScaling. The same table serves NeoX and GPT-J styles
 * (the kernel decides which dims pair up). Dynamic NTK: rows below the original context use
 * default frequencies (file comment).
 */
export function buildCosSinTable(rope: RopeSpec, maxPositions: number): Float32Array {
  const { invFreq, attentionScaling: s } = computeInvFreq(rope, maxPositions);
  const half = rope.rotaryDim / 2;
  const table = new Float32Array(maxPositions * rope.rotaryDim);
  const defaultRows = rope.type === 'dynamic' ? Math.min(maxPositions, required(rope.originalMaxPositionEmbeddings, 'originalMaxPositionEmbeddings')) : 0;
  const plain = defaultRows > 0 ? defaultInvFreq(rope.theta, rope.rotaryDim) : invFreq;
  for (let p = 0; p < maxPositions; p++) {
    const freqs = p < defaultRows ? plain : invFreq;
    const row = p * rope.rotaryDim;
    for (let j = 0; j < half; j++) {
      const angle = p * freqs[j]!;
      table[row + j] = Math.cos(angle) * s;
      table[row + half + j] = Math.sin(angle) * s;
    }
  }
  return table;
}

/**
 * ALiBi slopes, one per head (BLOOM's `build_alibi_tensor`; MPT's `build_mpt_alibi_tensor`
 * gives the same values: its odd-then-even reordering of the next power of two's slopes
 * is this series). For a non-power-of-2 head count the first
 * 2^floor(log2 n) heads get the geometric series and the rest take every other slope of
 * the series for twice as many heads.
 */
export function alibiSlopes(numHeads: number, maxBias = 8): Float32Array {
  const closest = 2 ** Math.floor(Math.log2(numHeads));
  const slopes = new Float32Array(numHeads);
  const base = 2 ** (-maxBias / closest);
  for (let i = 0; i < closest; i++) slopes[i] = base ** (i + 1);
  const extraBase = 2 ** (-maxBias / (2 * closest));
  for (let i = closest; i < numHeads; i++) slopes[i] = extraBase ** (2 * (i - closest) + 1);
  return slopes;
}

