/**
 * The switches every family starts from: a pre-norm, sequential RoPE decoder with RMSNorm,
 * a gated SiLU MLP, no biases and none of the extras (ALiBi, soft-capping, MoE, ...).
 * A family spreads this and overrides what differs, so a new ModelSpec field gets its
 * default here once.
 */
import type { ModelSpec } from '../spec.js';
import type { CommonFields } from '../config.js';
import { configInvalid } from './fields.js';

export const DEFAULT_NORM_EPS = 1e-5;

export function baseSpec(c: CommonFields, intermediateSize: number): ModelSpec {
  return {
    architecture: c.architecture,
    family: c.family,
    vocabSize: c.vocabSize,
    hiddenSize: c.hiddenSize,
    numLayers: c.numLayers,
    numHeads: c.numHeads,
    numKvHeads: c.numKvHeads,
    headDim: c.headDim,
    intermediateSize,
    maxPositionEmbeddings: c.maxPositionEmbeddings,
    norm: { type: 'rms', eps: DEFAULT_NORM_EPS, weightOffset: 0 },
    activation: 'silu',
    gatedMlp: true,
    bias: { qkv: false, o: false, mlp: false, lmHead: false },
    positional: 'rope',
    rope: c.rope,
    tieWordEmbeddings: c.tieWordEmbeddings,
    parallelResidual: false,
    slidingWindow: null,
    attentionScale: 1 / Math.sqrt(c.headDim),
    embeddingScale: 1,
    finalLogitSoftcap: null,
    attnLogitSoftcap: null,
    normPlacement: 'pre',
    sandwichNorms: false,
    embeddingNorm: false,
    wordEmbedDim: c.hiddenSize,
    alibiSlopes: null,
    clipQkv: null,
    qkNorm: false,
    slidingLayers: null,
    moe: null,
    bosTokenId: c.bosTokenId,
    eosTokenIds: c.eosTokenIds,
    padTokenId: c.padTokenId,
    torchDtype: c.torchDtype,
  };
}

/** `intermediate_size` (or the family's key for it), required. */
export function requireIntermediate(c: CommonFields, key = 'intermediate_size'): number {
  if (c.intermediateSize === null) throw configInvalid(key, `"${key}" must be a positive integer (missing)`);
  return c.intermediateSize;
}
