/**
 * A Llama-style pre-norm layer on the backend's fused linears (Backend.fusedLinear; CUDA: the ring GEMV
 * under PEREGRINE_GEMV=ring, decode-sized steps): each RMSNorm folded into the next linear's input, SiLU *
 * up into down_proj's, and o_proj / down_proj adding into the residual stream themselves, so a layer is
 * qkv, RoPE, attention, o_proj, gate_up, down_proj: six kernels instead of nine. Every op the backend
 * declines runs unfused, in exactly the order and with the buffers of DecoderModel's pre-norm layer.
 *
 * Which layers qualify (`fusableLayers`): one rank (no all-reduce between a linear and its residual add),
 * RMSNorm without bias, sequential residual, no sandwich norms, a dense SiLU-gated MLP, bf16 / f16 linears.
 */
import { isQuantizedWeight, type Backend, type LinearFusion, type Tensor } from '../backends/backend.js';
import type { LayerWeights, LinearWeight } from './model-weights.js';
import type { ModelSpec } from './spec.js';

/** The decoder's work buffers a fused layer reads and writes. */
export interface FusedLayerBuffers {
  readonly residual: Tensor;
  readonly normed: Tensor;
  readonly hidden: Tensor;
  readonly qkv: Tensor;
  readonly attnOut: Tensor;
  readonly mlpUp: Tensor;
  readonly mlpAct: Tensor;
}

/** Whether every layer of this model can run as a fused layer on a backend that offers fusedLinear. */
export function fusableLayers(spec: ModelSpec, layers: readonly LayerWeights[], backend: Backend, tensorParallel: boolean): boolean {
  if (backend.fusedLinear === undefined || tensorParallel) return false;
  if (spec.norm.type !== 'rms' || spec.parallelResidual || spec.normPlacement === 'post' || spec.moe || spec.activation !== 'silu' || !spec.gatedMlp) return false;
  const dense = (w: LinearWeight | null | undefined) => !!w && !isQuantizedWeight(w);
  return layers.every((l) => !l.inputNormBias && !l.postNormBias && !l.attnOutNorm && !l.mlpOutNorm && l.postNorm !== null
    && dense(l.qkv) && dense(l.o) && dense(l.up) && dense(l.down));
}

export class FusedLayer {
  constructor(private readonly backend: Backend, private readonly spec: ModelSpec, private readonly buf: FusedLayerBuffers) {}

  /**
   * One layer: `attentionCore` turns buf.qkv into buf.attnOut (RoPE, KV write, attention). `pending` is the
   * previous block output not yet in the residual stream; returns this layer's (null when already added).
   */
  run(lw: LayerWeights, T: number, pending: Tensor | null, attentionCore: () => void): Tensor | null {
    const { buf } = this;
    this.normLinear(buf.qkv, lw.qkv, lw.qkvBias, lw.inputNorm, T, pending);
    attentionCore();
    const attnPending = this.addLinear(buf.attnOut, lw.o, lw.oBias, T, undefined);
    this.normLinear(buf.mlpUp, lw.up, lw.upBias, lw.postNorm!, T, attnPending);
    return this.addLinear(buf.mlpUp, lw.down, lw.downBias, T, { kind: 'siluMul' });
  }

  /** out = linear(rmsNorm(residual += pending)): one op where nothing is pending and the backend fuses, else the norm and the linear */
  private normLinear(out: Tensor, w: LinearWeight, bias: Tensor | null, normWeight: Tensor, T: number, pending: Tensor | null): void {
    const { backend: b, buf } = this;
    const { eps, weightOffset } = this.spec.norm;
    if (!pending && b.fusedLinear!(out, buf.residual, w, bias, T, { input: { kind: 'rmsNorm', weight: normWeight, eps, weightOffset } })) return;
    b.rmsNorm(buf.normed, pending ?? buf.residual, normWeight, eps, T, pending ? buf.residual : null, weightOffset);
    b.linear(out, buf.normed, w, bias, T);
  }

  /** residual += linear(input(x)) where the backend fuses it (returns null); else hidden = linear(input(x)), returned as pending */
  private addLinear(x: Tensor, w: LinearWeight, bias: Tensor | null, T: number, input: LinearFusion['input']): Tensor | null {
    const { backend: b, buf } = this;
    if (b.fusedLinear!(buf.residual, x, w, bias, T, { input, accumulate: true })) return null;
    if (input?.kind !== 'siluMul') b.linear(buf.hidden, x, w, bias, T);
    else if (!b.fusedLinear!(buf.hidden, x, w, bias, T, { input })) {
      b.siluMul(buf.mlpAct, x, T);
      b.linear(buf.hidden, buf.mlpAct, w, bias, T);
    }
    return buf.hidden;
  }
}
