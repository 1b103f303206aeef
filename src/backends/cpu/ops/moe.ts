/**
 * Mixture of experts: routing (softmax, top-k, optional renormalisation) and the SiLU-gated
 * experts, computed token by token (the reference the grouped CUDA GEMMs are checked against).
 * Sums are kept in f64 and stored as f32.
 */
import type { Tensor } from '../../backend.js';
import { f32Of, i32Of, internal, requireCount, requireLength, requireRows } from '../cpu-tensor.js';
import { silu } from './activations.js';

export function moeRoute(topkIds: Tensor, topkWeights: Tensor, routerLogits: Tensor, numTokens: number, topK: number, renormalize: boolean): void {
  const op = 'moeRoute';
  requireCount(numTokens, op, 'numTokens');
  const E = routerLogits.shape[routerLogits.shape.length - 1] ?? 0;
  if (!Number.isInteger(topK) || topK < 1 || topK > E) throw internal(`${op}: topK ${topK} must be in 1..${E} (experts)`, { topK, numExperts: E });
  const ld = f32Of(routerLogits, op, 'routerLogits');
  const ids = i32Of(topkIds, op, 'topkIds');
  const wd = f32Of(topkWeights, op, 'topkWeights');
  requireRows(routerLogits, ld, numTokens, E, op, 'routerLogits');
  requireLength(topkIds, ids, numTokens * topK, op, 'topkIds');
  requireLength(topkWeights, wd, numTokens * topK, op, 'topkWeights');
  const probs = new Float64Array(E);
  const taken = new Uint8Array(E);
  for (let t = 0; t < numTokens; t++) {
    const row = t * E;
    let max = -Infinity;
    for (let e = 0; e < E; e++) max = Math.max(max, ld[row + e]);
    let sum = 0;
    for (let e = 0; e < E; e++) sum += probs[e] = Math.exp(ld[row + e] - max);
    taken.fill(0);
    let chosenSum = 0;
    for (let k = 0; k < topK; k++) {
      let best = -1;
      for (let e = 0; e < E; e++) if (!taken[e] && (best < 0 || probs[e] > probs[best])) best = e;
      taken[best] = 1;
      ids[t * topK + k] = best;
      wd[t * topK + k] = probs[best] / sum;
      chosenSum += probs[best] / sum;
    }
    if (renormalize) for (let k = 0; k < topK; k++) wd[t * topK + k] /= chosenSum;
  }
}

export function moeExperts(out: Tensor, x: Tensor, gateUp: Tensor, down: Tensor, topkIds: Tensor, topkWeights: Tensor, numTokens: number): void {
  const op = 'moeExperts';
  requireCount(numTokens, op, 'numTokens');
  if (gateUp.shape.length !== 3 || down.shape.length !== 3) {
    throw internal(`${op}: gateUp [E, 2I, H] and down [E, H, I] must be 3-D, got [${gateUp.shape.join(', ')}] and [${down.shape.join(', ')}]`);
  }
  const [E, twoI, H] = gateUp.shape as [number, number, number];
  const I = twoI / 2;
  if (down.shape[0] !== E || down.shape[1] !== H || down.shape[2] !== I) {
    throw internal(`${op}: down is [${down.shape.join(', ')}], expected [${E}, ${H}, ${I}]`, { gateUp: gateUp.shape, down: down.shape });
  }
  const topK = topkIds.shape[topkIds.shape.length - 1] ?? 0;
  const xd = f32Of(x, op, 'x');
  const od = f32Of(out, op, 'out');
  const gd = f32Of(gateUp, op, 'gateUp');
  const dd = f32Of(down, op, 'down');
  const ids = i32Of(topkIds, op, 'topkIds');
  const wd = f32Of(topkWeights, op, 'topkWeights');
  requireRows(x, xd, numTokens, H, op, 'x');
  requireRows(out, od, numTokens, H, op, 'out');
  requireLength(topkIds, ids, numTokens * topK, op, 'topkIds');
  requireLength(topkWeights, wd, numTokens * topK, op, 'topkWeights');
  if (od.buffer === xd.buffer && od.byteOffset === xd.byteOffset) throw internal(`${op}: out must not alias x`);
  const act = new Float64Array(I);
  const acc = new Float64Array(H);
  for (let t = 0; t < numTokens; t++) {
    const xo = t * H;
    acc.fill(0);
    for (let k = 0; k < topK; k++) {
      const e = ids[t * topK + k];
      if (e < 0 || e >= E) throw internal(`${op}: topkIds[${t}][${k}] = ${e} is outside 0..${E - 1}`, { token: t, expert: e });
      const g0 = e * twoI * H;
      for (let i = 0; i < I; i++) {
        let g = 0, u = 0;
        const gr = g0 + i * H, ur = g0 + (I + i) * H;
        for (let h = 0; h < H; h++) {
          g += gd[gr + h] * xd[xo + h];
          u += gd[ur + h] * xd[xo + h];
        }
        act[i] = silu(Math.fround(g)) * Math.fround(u);
      }
      const w = wd[t * topK + k];
      const d0 = e * H * I;
      for (let h = 0; h < H; h++) {
        let s = 0;
        for (let i = 0; i < I; i++) s += dd[d0 + h * I + i] * act[i];
        acc[h] += w * s;
      }
    }
    for (let h = 0; h < H; h++) od[xo + h] = acc[h];
  }
}
