/**
 * The generic decoder: one forward pass for every family, driven by ModelSpec.
 * Read it top to bottom: embed -> N x layer -> final norm -> LM head. A layer is pre-norm
 * (x += attn(norm(x)); x += mlp(norm(x)), or both blocks from the same input when the residual
 * is parallel) or post-norm (x = norm(x + attn(x)); x = norm(x + mlp(x))).
 *
 * The batch is flattened: `numTokens` rows from `numSeqs` sequences, each sequence's
 * queries attending to its own paged KV history (prefill, chunked prefill and decode alike).
 * Work buffers are allocated once, sized for `maxNumTokens` / `maxNumSeqs`.
 *
 * Tensor parallelism (src/parallel/sharding.ts): given a communicator of size > 1, the spec and
 * weights are the rank's shard; the block outputs (after o_proj, after down, or their sum in
 * parallel-residual layers) are all-reduced; so is the lookup of an embedding cut by vocab rows
 * (each rank fills the rows of its ids, zeros elsewhere), before project_in, the scale, learned
 * positions and the embedding norm; the logits of an LM head cut by vocab rows are all-gathered.
 * Without one, nothing changes.
 */
import { isQuantizedWeight, type AttentionMetadata, type AttentionParams, type Backend, type DType, type Fp8Activations, type LayerKvCache, type QkNormParams, type QuantizedWeight, type RopeParams, type Tensor } from '../backends/backend.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../weights/dtype.js';
import { buildCosSinTable } from './rope.js';
import type { ModelSpec } from './spec.js';
import type { LayerWeights, LinearWeight, ModelWeights } from './model-weights.js';
import { PeregrineError } from '../errors.js';
import type { Communicator } from '../parallel/communicator.js';
import { FusedLayer, fusableLayers } from './fused-layer.js';

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
  private readonly qkNormParams: QkNormParams;
  /** spec.embeddingScale in the activation dtype, as HF casts it to the weights' dtype (Gemma: sqrt(3072) -> 55.5 in bf16) */
  private readonly embeddingScale: number;
  /** one per layer (sliding window or not) */
  private readonly attnParams: readonly AttentionParams[];
  // work buffers
  private readonly hidden: Tensor;   // [T, H] a block's output
  private readonly branch: Tensor;   // [T, H] the other block's output (parallel MLP, sandwich norms)
  private readonly residual: Tensor; // [T, H] the residual stream
  private readonly normed: Tensor;   // [T, H] a block's input
  private readonly normed2: Tensor | null;  // [T, H] the MLP's input in parallel layers with two norms
  private readonly embedded: Tensor | null; // [T, wordEmbedDim] before project_in
  private readonly qkv: Tensor;
  private readonly attnOut: Tensor;
  private readonly mlpUp: Tensor | null;  // dense MLPs only
  private readonly mlpAct: Tensor | null;
  private readonly routerLogits: Tensor | null; // f32 [T, numExperts]
  private readonly topkIds: Tensor | null;      // i32 [T, topK]
  private readonly topkWeights: Tensor | null;  // f32 [T, topK]
  /** normed quantized to E4M3 by the norm, for FP8 qkv / gate_up linears (backend.rmsNormFp8); null when unused */
  private readonly normedFp8: Fp8Activations | null;
  /** mlpAct quantized to E4M3 by the SiLU, for FP8 down linears (backend.siluMulFp8); null when unused */
  private readonly actFp8: Fp8Activations | null;
  private readonly lastHidden: Tensor;
  private readonly lastNormed: Tensor;
  private readonly lastProjected: Tensor | null; // [R, wordEmbedDim] after project_out
  readonly logits: Tensor; // f32 [maxNumLogits, vocab]
  /** tensor parallel, when the weights are cut: the first vocab row of the rank's embedding rows, f32 [R, vocab / tp] logits */
  private readonly embedVocabStart: number | null;
  private readonly logitsPart: Tensor | null;
  private readonly comm: Communicator | null;
  /** Llama-style layers on the backend's fused linears (fused-layer.ts), where the model and backend allow */
  private readonly fused: FusedLayer | null;
  private readonly ownTensors: Tensor[] = [];

  constructor(
    readonly spec: ModelSpec,
    readonly backend: Backend,
    readonly weights: ModelWeights,
    readonly limits: DecoderLimits,
    comm: Communicator | null = null,
  ) {
    const s = spec;
    this.comm = comm && comm.size > 1 ? comm : null;
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
    const H = s.hiddenSize;
    const projected = s.wordEmbedDim !== H;
    this.hidden = buf([T, H]);
    this.branch = buf([T, H]);
    this.residual = buf([T, H]);
    this.normed = buf([T, H]);
    this.normed2 = s.parallelResidual ? buf([T, H]) : null;
    this.embedded = projected ? buf([T, s.wordEmbedDim]) : null;
    this.qkv = buf([T, this.qSize + 2 * this.kvSize]);
    this.attnOut = buf([T, this.qSize]);
    this.mlpUp = s.moe ? null : buf([T, (s.gatedMlp ? 2 : 1) * s.intermediateSize]);
    this.mlpAct = s.moe ? null : buf([T, s.intermediateSize]);
    this.routerLogits = s.moe ? buf([T, s.moe.numExperts], 'f32') : null;
    this.topkIds = s.moe ? buf([T, s.moe.topK], 'i32') : null;
    this.topkWeights = s.moe ? buf([T, s.moe.topK], 'f32') : null;
    const fp8Inputs = weights.layers.some((l) => isFp8(l.qkv) || isFp8(l.up));
    const fuseFp8 = fp8Inputs && backend.rmsNormFp8 !== undefined && s.norm.type === 'rms' && !s.parallelResidual && s.normPlacement !== 'post' && H % 16 === 0;
    this.normedFp8 = fuseFp8 ? { codes: buf([T, H / 4], 'i32'), scales: buf([T], 'f32') } : null;
    const I = s.intermediateSize;
    const fuseSilu = !s.moe && s.activation === 'silu' && s.gatedMlp && backend.siluMulFp8 !== undefined && weights.layers.some((l) => isFp8(l.down)) && I % 16 === 0;
    this.actFp8 = fuseSilu ? { codes: buf([T, I / 4], 'i32'), scales: buf([T], 'f32') } : null;
    this.lastHidden = buf([R, H]);
    this.lastNormed = buf([R, H]);
    this.lastProjected = projected ? buf([R, s.wordEmbedDim]) : null;
    this.logits = buf([R, s.vocabSize], 'f32');
    const embedRows = weights.embedTokens.shape[0]!;
    const headRows = weights.lmHead.shape[0]!;
    this.embedVocabStart = embedRows < s.vocabSize ? this.checkPart(embedRows, s.vocabSize, 'embedding rows') * this.comm!.rank : null;
    this.logitsPart = headRows < s.vocabSize ? buf([R, this.checkPart(headRows, s.vocabSize, 'LM head rows')], 'f32') : null;

    this.fused = this.mlpUp && this.mlpAct && fusableLayers(s, weights.layers, backend, this.comm !== null)
      ? new FusedLayer(backend, s, { residual: this.residual, normed: this.normed, hidden: this.hidden, qkv: this.qkv, attnOut: this.attnOut, mlpUp: this.mlpUp, mlpAct: this.mlpAct })
      : null;

    this.cosSin = null;
    if (s.rope) {
      const table = buildCosSinTable(s.rope, s.maxPositionEmbeddings);
      this.cosSin = backend.fromF32([s.maxPositionEmbeddings, s.rope.rotaryDim], table, 'f32');
      this.ownTensors.push(this.cosSin);
    }
    const heads = { numHeads: s.numHeads, numKvHeads: s.numKvHeads, headDim: s.headDim };
    this.ropeParams = { ...heads, rotaryDim: s.rope?.rotaryDim ?? s.headDim, style: s.rope?.style ?? 'neox' };
    this.qkNormParams = { ...heads, weightOffset: s.norm.weightOffset };
    this.embeddingScale = roundToDtype(s.embeddingScale, dt);
    const alibiSlopes = s.alibiSlopes ? buf([s.numHeads], 'f32') : null;
    if (alibiSlopes) backend.writeF32(alibiSlopes, Float32Array.from(s.alibiSlopes!));
    this.attnParams = Array.from({ length: s.numLayers }, (_, i) => ({
      ...heads,
      blockSize: limits.blockSize,
      scale: s.attentionScale,
      slidingWindow: s.slidingLayers === null || s.slidingLayers[i] ? s.slidingWindow : null,
      alibiSlopes,
      logitSoftcap: s.attnLogitSoftcap,
    }));
  }

  /** Runs the batch; returns the f32 logits tensor whose first `numLogits` rows belong to `logitsIndices`. */
  forward(inp: DeviceInputs, kvCache: readonly LayerKvCache[], numLogits: number): Tensor {
    const { backend: b, spec: s, weights: w } = this;
    const T = inp.meta.numTokens;
    const S = inp.meta.numSeqs;
    if (T > this.limits.maxNumTokens || S > this.limits.maxNumSeqs || numLogits > this.limits.maxNumLogits) {
      throw new PeregrineError('PGN_ERR_INTERNAL', `batch of ${T} tokens / ${S} seqs / ${numLogits} logits exceeds the model's buffers (${this.limits.maxNumTokens} / ${this.limits.maxNumSeqs} / ${this.limits.maxNumLogits})`);
    }

    this.embed(inp, T); // -> residual

    // `pending` is a block output not yet added to the residual stream: the next norm adds it
    let pending: Tensor | null = null;
    for (let i = 0; i < s.numLayers; i++) {
      const lw = w.layers[i]!;
      if (s.normPlacement === 'post') pending = this.postNormLayer(i, lw, kvCache[i]!, inp, T);
      else if (this.fused) pending = this.fused.run(lw, T, pending, () => this.attentionCore(i, lw, kvCache[i]!, inp, T));
      else pending = this.preNormLayer(i, lw, kvCache[i]!, inp, T, pending);
    }
    if (pending) b.add(this.residual, this.residual, pending, T);

    // only the rows that yield logits: final norm, project_out, LM head, soft-capping
    b.gatherRows(this.lastHidden, this.residual, inp.logitsIndices, numLogits);
    let h = this.lastHidden;
    if (w.norm) {
      this.norm(this.lastNormed, h, w.norm, w.normBias, numLogits, null);
      h = this.lastNormed;
    }
    if (w.projectOut && this.lastProjected) {
      b.linear(this.lastProjected, h, w.projectOut, null, numLogits);
      h = this.lastProjected;
    }
    if (this.logitsPart) {
      b.linear(this.logitsPart, h, w.lmHead, w.lmHeadBias, numLogits);
      this.comm!.allGather(this.logits, this.logitsPart, numLogits, this.logitsPart.shape[1]!);
    } else {
      b.linear(this.logits, h, w.lmHead, w.lmHeadBias, numLogits);
    }
    if (s.finalLogitSoftcap !== null) b.softcap(this.logits, this.logits, s.finalLogitSoftcap, numLogits);
    return this.logits;
  }

  /** residual = [norm](scale * embed(ids) [-> project_in] [+ embed_positions(positions)]) */
  private embed(inp: DeviceInputs, T: number): void {
    const { backend: b, weights: w } = this;
    if (w.projectIn && this.embedded) {
      this.lookup(this.embedded, inp.tokenIds, T);
      b.linear(this.hidden, this.embedded, w.projectIn, null, T);
    } else {
      this.lookup(this.hidden, inp.tokenIds, T);
    }
    if (this.embeddingScale !== 1) b.scale(this.hidden, this.hidden, this.embeddingScale, T);
    if (w.embedPositions) {
      b.embedding(this.normed, w.embedPositions, inp.positions, T);
      b.add(this.hidden, this.hidden, this.normed, T);
    }
    if (w.embedNorm) this.norm(this.residual, this.hidden, w.embedNorm, w.embedNormBias ?? null, T, null);
    else b.copy(this.residual, this.hidden, T);
  }

  /** out [T, wordEmbedDim] = embed_tokens[ids]; ranks holding vocab rows sum their lookups (one nonzero per row) */
  private lookup(out: Tensor, ids: Tensor, T: number): void {
    if (this.embedVocabStart === null) return this.backend.embedding(out, this.weights.embedTokens, ids, T);
    this.backend.embeddingShard(out, this.weights.embedTokens, ids, T, this.embedVocabStart);
    this.comm!.allReduceSum(out, T * this.spec.wordEmbedDim);
  }

  /** Tensor parallel: sums the ranks' partial outputs of a row-parallel block (o_proj, down) */
  private reduce(t: Tensor, T: number): void {
    this.comm?.allReduceSum(t, T * this.spec.hiddenSize);
  }

  /** rows of a weight cut by tensor parallelism: `part` of `whole`, and a communicator to gather them */
  private checkPart(part: number, whole: number, what: string): number {
    if (!this.comm || part * this.comm.size !== whole) {
      throw new PeregrineError('PGN_ERR_INTERNAL', `the weights hold ${part} of ${whole} ${what}, which needs a tensor-parallel communicator of ${whole / part} ranks (have ${this.comm?.size ?? 1})`);
    }
    return part;
  }

  /**
   * Pre-norm layer. Sequential: x += attn(norm1(x)); x += mlp(norm2(x)) (Gemma 2 norms each block
   * output again). Parallel (GPT-J, NeoX, Falcon): x += attn(norm1(x)) + mlp(norm2(x) or norm1(x)).
   * Returns the last block output, which the next norm adds to the residual.
   */
  private preNormLayer(i: number, lw: LayerWeights, cache: LayerKvCache, inp: DeviceInputs, T: number, pending: Tensor | null): Tensor {
    const b = this.backend;
    // normed's only reader is qkv_proj, but in parallel-residual layers the MLP reads it too
    const qkvIn = this.normFor(lw.qkv, this.normed, pending ?? this.residual, lw.inputNorm, lw.inputNormBias, T, pending ? this.residual : null, !this.spec.parallelResidual);
    this.attention(i, lw, this.normed, cache, inp, T, qkvIn); // -> hidden

    if (this.spec.parallelResidual) {
      let mlpIn = this.normed;
      if (lw.postNorm && this.normed2) {
        this.norm(this.normed2, this.residual, lw.postNorm, lw.postNormBias, T, null);
        mlpIn = this.normed2;
      }
      this.mlp(lw, mlpIn, this.branch, T);
      b.add(this.hidden, this.hidden, this.branch, T);
      this.reduce(this.hidden, T); // one all-reduce for both blocks
      return this.hidden;
    }

    this.reduce(this.hidden, T);
    let attnOut = this.hidden;
    if (lw.attnOutNorm) {
      this.norm(this.branch, this.hidden, lw.attnOutNorm, null, T, null);
      attnOut = this.branch;
    }
    const upIn = this.normFor(lw.up, this.normed, attnOut, lw.postNorm!, lw.postNormBias, T, this.residual, !this.spec.moe); // MoE: the router reads it
    this.mlp(lw, this.normed, this.hidden, T, upIn);
    this.reduce(this.hidden, T);
    if (lw.mlpOutNorm) {
      this.norm(this.branch, this.hidden, lw.mlpOutNorm, null, T, null);
      return this.branch;
    }
    return this.hidden;
  }

  /** Post-norm layer (OPT-350m): x = norm1(x + attn(x)); x = norm2(x + mlp(x)). Adds everything itself. */
  private postNormLayer(i: number, lw: LayerWeights, cache: LayerKvCache, inp: DeviceInputs, T: number): null {
    const b = this.backend;
    this.attention(i, lw, this.residual, cache, inp, T); // -> hidden
    this.reduce(this.hidden, T);
    this.norm(this.normed, this.hidden, lw.inputNorm, lw.inputNormBias, T, this.residual);
    b.copy(this.residual, this.normed, T);
    this.mlp(lw, this.normed, this.hidden, T);
    this.reduce(this.hidden, T);
    this.norm(this.normed, this.hidden, lw.postNorm!, lw.postNormBias, T, this.residual);
    b.copy(this.residual, this.normed, T);
    return null;
  }

  /** attention block: hidden = o_proj(attn(rope([qkNorm]([clip](qkv(x)))))); xq: x in E4M3 for an FP8 qkv */
  private attention(i: number, lw: LayerWeights, x: Tensor, cache: LayerKvCache, inp: DeviceInputs, T: number, xq: Fp8Activations | null = null): void {
    this.backend.linear(this.qkv, x, lw.qkv, lw.qkvBias, T, xq);
    this.attentionCore(i, lw, cache, inp, T);
    this.backend.linear(this.hidden, this.attnOut, lw.o, lw.oBias, T);
  }

  /** attnOut = attn(rope([qkNorm]([clip](qkv)))), the KV cache written */
  private attentionCore(i: number, lw: LayerWeights, cache: LayerKvCache, inp: DeviceInputs, T: number): void {
    const { backend: b, spec: s } = this;
    if (s.clipQkv !== null) b.clamp(this.qkv, this.qkv, -s.clipQkv, s.clipQkv, T);
    if (lw.qNorm && lw.kNorm) b.qkRmsNorm(this.qkv, lw.qNorm, lw.kNorm, s.norm.eps, T, this.qkNormParams);
    b.ropeWriteKv(this.qkv, inp.positions, this.cosSin, cache, inp.slotMapping, T, this.ropeParams);
    b.attention(this.attnOut, this.qkv, cache, inp.meta, this.attnParams[i]!);
  }

  /** MLP block: out = down(act(gate) * up) or down(act(up)); MoE: the router's top-k experts; xq: x in E4M3 for an FP8 up */
  private mlp(lw: LayerWeights, x: Tensor, out: Tensor, T: number, xq: Fp8Activations | null = null): void {
    const { backend: b, spec: s } = this;
    if (s.moe && lw.router && this.routerLogits && this.topkIds && this.topkWeights) {
      b.linear(this.routerLogits, x, lw.router, null, T);
      b.moeRoute(this.topkIds, this.topkWeights, this.routerLogits, T, s.moe.topK, s.moe.renormalize);
      if (isQuantizedWeight(lw.up) || isQuantizedWeight(lw.down)) throw new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', 'quantized MoE experts are not supported yet');
      b.moeExperts(out, x, lw.up, lw.down, this.topkIds, this.topkWeights, T);
      return;
    }
    const up = this.mlpUp!, act = this.mlpAct!;
    b.linear(up, x, lw.up, lw.upBias, T, xq);
    let downXq: Fp8Activations | null = null;
    switch (s.activation) {
      case 'silu':
        if (!s.gatedMlp) throw new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', 'ungated SiLU MLP');
        downXq = this.siluFor(lw.down, act, up, T);
        break;
      case 'gelu':
      case 'gelu_tanh': {
        const approx = s.activation === 'gelu_tanh' ? 'tanh' : 'none';
        if (s.gatedMlp) b.geluMul(act, up, T, approx);
        else b.gelu(act, up, T, approx);
        break;
      }
      case 'relu':
        if (s.gatedMlp) throw new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', 'gated ReLU MLP');
        b.relu(act, up, T);
        break;
    }
    b.linear(out, act, lw.down, lw.downBias, T, downXq);
  }

  /** act = siluMul(up); where `next` is FP8 and the backend fuses (siluMulFp8), act also quantized for it: returns those E4M3 activations, else null */
  private siluFor(next: LinearWeight, act: Tensor, up: Tensor, T: number): Fp8Activations | null {
    const xq = this.actFp8;
    if (xq && isFp8(next) && this.backend.siluMulFp8!(act, up, T, xq, next.inputScale, next)) return xq; // act's only reader: down
    this.backend.siluMul(act, up, T);
    return null;
  }

  /**
   * this.norm for the input of linear `next`: where that is FP8 and the backend fuses (rmsNormFp8), out is also
   * quantized for it in one kernel; returns those E4M3 activations for `next`'s linear call, else null.
   * soleReader: `next` is out's only reader (the backend may then write only the E4M3 activations).
   */
  private normFor(next: LinearWeight, out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | null, n: number, residual: Tensor | null, soleReader: boolean): Fp8Activations | null {
    const xq = this.normedFp8;
    const e = this.spec.norm;
    if (xq && isFp8(next) && this.backend.rmsNormFp8!(out, x, weight, e.eps, n, residual, e.weightOffset, xq, next.inputScale, soleReader ? next : undefined)) return xq;
    this.norm(out, x, weight, bias, n, residual);
    return null;
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

function isFp8(w: LinearWeight | null | undefined): w is QuantizedWeight {
  return isQuantizedWeight(w) && w.kind === 'fp8';
}

function roundToDtype(x: number, dtype: DType): number {
  if (dtype === 'bf16') return bf16ToF32(f32ToBf16(x));
  if (dtype === 'f16') return f16ToF32(f32ToF16(x));
  return Math.fround(x);
}
