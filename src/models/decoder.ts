/**
 * The generic decoder: one forward pass for every family, driven by ModelSpec.
 * Read it top to bottom: embed -> N x (norm, attention, norm, MLP) -> norm -> LM head.
 *
 * The batch is flattened: `numTokens` rows from `numSeqs` sequences, each sequence's
 * queries attending to its own paged KV history (prefill, chunked prefill and decode alike).
 * Work buffers are allocated once, sized for `maxNumTokens` / `maxNumSeqs`.
 */
import type { AttentionMetadata, AttentionParams, Backend, LayerKvCache, RopeParams, Tensor } from '../backends/backend.js';
import { buildCosSinTable } from './rope.js';
import type { ModelSpec } from './spec.js';
import type { LayerWeights, ModelWeights } from './model-weights.js';
import { PeregrineError } from '../errors.js';

/** Device-side inputs of one step (written by the runner, read by the forward). */
export interface DeviceInputs {
  readonly tokenIds: Tensor;      // i32 [maxNumTokens]
  readonly positions: Tensor;     // i32 [maxNumTokens]
  readonly slotMapping: Tensor;   // i32 [maxNumTokens]
  readonly logitsIndices: Tensor; // i32 [maxNumSeqs]
  readonly meta: AttentionMetadata;
}

export interface DecoderLimits {
  readonly maxNumTokens: number;
  readonly maxNumSeqs: number;
  /** rows of logits one step can produce (>= maxNumSeqs; more for prompt logprobs) */
  readonly maxNumLogits: number;
  readonly blockSize: number;
}

export class DecoderModel {
  readonly qSize: number;
  readonly kvSize: number;
  private readonly cosSin: Tensor | null;
  private readonly ropeParams: RopeParams;
  private readonly attnParams: AttentionParams;
  // work buffers
  private readonly hidden: Tensor;
  private readonly residual: Tensor;
  private readonly normed: Tensor;
  private readonly qkv: Tensor;
  private readonly attnOut: Tensor;
  private readonly mlpUp: Tensor;
  private readonly mlpAct: Tensor;
  private readonly lastHidden: Tensor;
  private readonly lastNormed: Tensor;
  readonly logits: Tensor; // f32 [maxNumLogits, vocab]
  private readonly ownTensors: Tensor[] = [];

  constructor(
    readonly spec: ModelSpec,
    readonly backend: Backend,
    readonly weights: ModelWeights,
    readonly limits: DecoderLimits,
  ) {
    const s = spec;
    if (s.positional === 'alibi') throw new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', `${s.architecture}: ALiBi is not supported by the decoder yet`);
    this.qSize = s.numHeads * s.headDim;
    this.kvSize = s.numKvHeads * s.headDim;
    const dt = backend.activationDtype;
    const T = limits.maxNumTokens;
    const R = limits.maxNumLogits;
    const buf = (shape: number[], dtype = dt) => {
      const t = backend.empty(shape, dtype);
      this.ownTensors.push(t);
      return t;
    };
    this.hidden = buf([T, s.hiddenSize]);
    this.residual = buf([T, s.hiddenSize]);
    this.normed = buf([T, s.hiddenSize]);
    this.qkv = buf([T, this.qSize + 2 * this.kvSize]);
    this.attnOut = buf([T, this.qSize]);
    this.mlpUp = buf([T, (s.gatedMlp ? 2 : 1) * s.intermediateSize]);
    this.mlpAct = buf([T, s.intermediateSize]);
    this.lastHidden = buf([R, s.hiddenSize]);
    this.lastNormed = buf([R, s.hiddenSize]);
    this.logits = buf([R, s.vocabSize], 'f32');

    this.cosSin = null;
    if (s.rope) {
      const table = buildCosSinTable(s.rope, s.maxPositionEmbeddings);
      this.cosSin = backend.fromF32([s.maxPositionEmbeddings, s.rope.rotaryDim], table, 'f32');
      this.ownTensors.push(this.cosSin);
    }
    this.ropeParams = {
      numHeads: s.numHeads,
      numKvHeads: s.numKvHeads,
      headDim: s.headDim,
      rotaryDim: s.rope?.rotaryDim ?? s.headDim,
      style: s.rope?.style ?? 'neox',
    };
    this.attnParams = {
      numHeads: s.numHeads,
      numKvHeads: s.numKvHeads,
      headDim: s.headDim,
      blockSize: limits.blockSize,
      scale: s.attentionScale,
      slidingWindow: s.slidingWindow,
      alibiSlopes: null,
      logitSoftcap: s.attnLogitSoftcap,
    };
  }

  /** Runs the batch; returns the f32 logits tensor whose first `numLogits` rows belong to `logitsIndices`. */
  forward(inp: DeviceInputs, kvCache: readonly LayerKvCache[], numLogits: number): Tensor {
    const { backend: b, spec: s, weights: w } = this;
    const T = inp.meta.numTokens;
    const S = inp.meta.numSeqs;
    if (T > this.limits.maxNumTokens || S > this.limits.maxNumSeqs || numLogits > this.limits.maxNumLogits) {
      throw new PeregrineError('PGN_ERR_INTERNAL', `batch of ${T} tokens / ${S} seqs / ${numLogits} logits exceeds the model's buffers (${this.limits.maxNumTokens} / ${this.limits.maxNumSeqs} / ${this.limits.maxNumLogits})`);
    }

    b.embedding(this.hidden, w.embedTokens, inp.tokenIds, T);
    if (w.embedPositions) {
      b.embedding(this.normed, w.embedPositions, inp.positions, T);
      b.add(this.hidden, this.hidden, this.normed, T);
    }
    b.copy(this.residual, this.hidden, T);

    for (let i = 0; i < s.numLayers; i++) {
      const lw = w.layers[i]!;
      // residual already holds this layer's input; `hidden` holds the previous block's output (layer > 0)
      this.norm(this.normed, i === 0 ? this.residual : this.hidden, lw.inputNorm, lw.inputNormBias, T, i === 0 ? null : this.residual);
      this.attention(lw, kvCache[i]!, inp, T);
      this.norm(this.normed, this.hidden, lw.postNorm!, lw.postNormBias, T, this.residual);
      this.mlp(lw, T);
    }

    // final residual add, then only the rows that yield logits
    b.add(this.residual, this.residual, this.hidden, T);
    b.gatherRows(this.lastHidden, this.residual, inp.logitsIndices, numLogits);
    this.norm(this.lastNormed, this.lastHidden, w.norm, w.normBias, numLogits, null);
    b.linear(this.logits, this.lastNormed, w.lmHead, w.lmHeadBias, numLogits);
    return this.logits;
  }

  /** attention block: hidden = o_proj(attn(rope(qkv(normed)))) */
  private attention(lw: LayerWeights, cache: LayerKvCache, inp: DeviceInputs, T: number): void {
    const b = this.backend;
    b.linear(this.qkv, this.normed, lw.qkv, lw.qkvBias, T);
    b.ropeWriteKv(this.qkv, inp.positions, this.cosSin, cache, inp.slotMapping, T, this.ropeParams);
    b.attention(this.attnOut, this.qkv, cache, inp.meta, this.attnParams);
    b.linear(this.hidden, this.attnOut, lw.o, lw.oBias, T);
  }

  /** MLP block: hidden = down(act(gate) * up) or down(act(up)) */
  private mlp(lw: LayerWeights, T: number): void {
    const b = this.backend;
    b.linear(this.mlpUp, this.normed, lw.up, lw.upBias, T);
    switch (this.spec.activation) {
      case 'silu':
        if (!this.spec.gatedMlp) throw new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', 'ungated SiLU MLP');
        b.siluMul(this.mlpAct, this.mlpUp, T);
        break;
      case 'gelu':
      case 'gelu_tanh': {
        const approx = this.spec.activation === 'gelu_tanh' ? 'tanh' : 'none';
        if (this.spec.gatedMlp) b.geluMul(this.mlpAct, this.mlpUp, T, approx);
        else b.gelu(this.mlpAct, this.mlpUp, T, approx);
        break;
      }
      case 'relu':
        b.relu(this.mlpAct, this.mlpUp, T);
        break;
    }
    b.linear(this.hidden, this.mlpAct, lw.down, lw.downBias, T);
  }

  /** out = norm(x), or with `residual`: residual += x; out = norm(residual) */
  private norm(out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | null, n: number, residual: Tensor | null): void {
    const { eps, type, weightOffset } = this.spec.norm;
    if (type === 'rms') this.backend.rmsNorm(out, x, weight, eps, n, residual, weightOffset);
    else this.backend.layerNorm(out, x, weight, bias, eps, n, residual);
  }

  dispose(): void {
    for (const t of this.ownTensors) this.backend.free(t);
    this.ownTensors.length = 0;
  }
}
