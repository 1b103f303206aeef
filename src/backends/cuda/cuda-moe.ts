/**
 * Mixture-of-experts ops: routing (softmax, top-k, renormalisation) and the SiLU-gated
 * experts as two GEMV-style kernels through an f32 scratch of [T, topK, I]. Correct but not
 * fast for prefill (no reuse of expert weights across tokens): grouped GEMMs are future work.
 *
 * The scratch grows on demand. A captured graph keeps the scratch address it saw, so run a
 * step of the largest batch eagerly before capturing MoE decode graphs.
 */
import type { Tensor } from '../backend.js';
import type { CachingAllocator } from './allocator.js';
import type { OpContext } from './cuda-ops.js';
import { floatTensor, i32Tensor, invalid, lastDim, requireCount, requireLength, requireRows, sameDtype } from './op-checks.js';

const ROWS_PER_BLOCK = 4;

/** A device buffer that only grows; the old block goes back to the (stream-ordered) allocator. */
export class Scratch {
  readonly #allocator: CachingAllocator;
  #ptr = 0;
  #bytes = 0;

  constructor(allocator: CachingAllocator) {
    this.#allocator = allocator;
  }

  get(bytes: number): number {
    if (bytes > this.#bytes) {
      if (this.#ptr) this.#allocator.free(this.#ptr);
      this.#ptr = this.#allocator.alloc(bytes);
      this.#bytes = bytes;
    }
    return this.#ptr;
  }

  release(): void {
    if (this.#ptr) this.#allocator.free(this.#ptr);
    this.#ptr = 0;
    this.#bytes = 0;
  }
}

export function moeRoute(ctx: OpContext, idsT: Tensor, weightsT: Tensor, logitsT: Tensor, numTokens: number, topK: number, renormalize: boolean): void {
  const op = 'moeRoute';
  requireCount(numTokens, op, 'numTokens');
  const logits = floatTensor(logitsT, op, 'routerLogits', ['f32']);
  const E = lastDim(logits);
  if (!Number.isInteger(topK) || topK < 1 || topK > E) throw invalid(op, `topK ${topK} must be in 1..${E} (experts)`, { topK, numExperts: E });
  requireRows(logits, numTokens, E, op, 'routerLogits');
  const ids = i32Tensor(idsT, op, 'topkIds', numTokens * topK);
  const weights = floatTensor(weightsT, op, 'topkWeights', ['f32']);
  requireLength(weights, numTokens * topK, op, 'topkWeights');
  ctx.kernels.get('moe_route', 'f32').launch(numTokens, 32, E * 4, ctx.stream, [ids.ptr, weights.ptr, logits.ptr, E, topK, renormalize ? 1 : 0]);
}

export function moeExperts(ctx: OpContext, scratch: Scratch, outT: Tensor, xT: Tensor, gateUpT: Tensor, downT: Tensor, idsT: Tensor, weightsT: Tensor, numTokens: number): void {
  const op = 'moeExperts';
  requireCount(numTokens, op, 'numTokens');
  const x = floatTensor(xT, op, 'x');
  const out = floatTensor(outT, op, 'out');
  const gateUp = floatTensor(gateUpT, op, 'gateUp');
  const down = floatTensor(downT, op, 'down');
  sameDtype(op, x, [out, 'out'], [gateUp, 'gateUp'], [down, 'down']);
  if (gateUp.shape.length !== 3 || down.shape.length !== 3) {
    throw invalid(op, `gateUp [E, 2I, H] and down [E, H, I] must be 3-D, got [${gateUp.shape.join(', ')}] and [${down.shape.join(', ')}]`);
  }
  const [E, twoI, H] = gateUp.shape as [number, number, number];
  const I = twoI / 2;
  if (down.shape[0] !== E || down.shape[1] !== H || down.shape[2] !== I) {
    throw invalid(op, `down is [${down.shape.join(', ')}], expected [${E}, ${H}, ${I}]`, { gateUp: gateUp.shape, down: down.shape });
  }
  const topK = lastDim(idsT);
  const ids = i32Tensor(idsT, op, 'topkIds', numTokens * topK);
  const weights = floatTensor(weightsT, op, 'topkWeights', ['f32']);
  requireLength(weights, numTokens * topK, op, 'topkWeights');
  requireRows(x, numTokens, H, op, 'x');
  requireRows(out, numTokens, H, op, 'out');
  if (out.ptr === x.ptr) throw invalid(op, 'out must not alias x');
  if (numTokens === 0) return;
  const act = scratch.get(numTokens * topK * I * 4);
  ctx.kernels.typed('moe_gate_up', x.dtype).launch([numTokens * topK, Math.ceil(I / ROWS_PER_BLOCK)], 32 * ROWS_PER_BLOCK, 0, ctx.stream, [act, x.ptr, gateUp.ptr, ids.ptr, topK, H, I, E]);
  ctx.kernels.typed('moe_down', x.dtype).launch([numTokens, Math.ceil(H / ROWS_PER_BLOCK)], 32 * ROWS_PER_BLOCK, 0, ctx.stream, [out.ptr, act, down.ptr, ids.ptr, weights.ptr, topK, H, I, E]);
}
