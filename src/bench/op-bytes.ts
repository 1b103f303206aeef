/**
 * The least bytes each Backend op must move through memory, from its arguments: what the op
 * profiler's bandwidth columns are measured against. Linears: weights + activations in and out;
 * attention: K and V rows of every sequence's context once, plus q and out; norms: rows in, out
 * and the residual read and written.
 */
import { bytesPerElement, isQuantizedWeight, numel, type Backend, type QuantizedWeight, type Tensor } from '../backends/backend.js';

/** bytes of the first `rows` rows of `t` */
function rowBytes(t: Tensor, rows: number): number {
  const width = t.shape[t.shape.length - 1] ?? 1;
  return rows * width * bytesPerElement(t.dtype);
}

function weightBytes(w: Tensor | QuantizedWeight): number {
  if (!isQuantizedWeight(w)) return numel(w.shape) * bytesPerElement(w.dtype);
  return [w.qweight, w.scales, w.zeros].reduce((s, t) => s + (t ? numel(t.shape) * bytesPerElement(t.dtype) : 0), 0);
}

type Args<M extends keyof Backend> = Backend[M] extends (...a: infer P) => unknown ? P : never;

/** The least bytes an op moves, from its arguments (Backend's signatures). */
export function opBytes(method: string, args: unknown[], contextLens: ArrayLike<number>): number {
  const a = args as unknown;
  switch (method) {
    case 'linear':
    case 'fusedLinear': { // x: the linear's input (residual for rmsNorm), or gateUp (both halves read)
      const [out, x, w, bias, T] = a as Args<'linear'>;
      return weightBytes(w) + rowBytes(x, T) + rowBytes(out, T) + (bias ? numel(bias.shape) * bytesPerElement(bias.dtype) : 0);
    }
    case 'attention': {
      const [out, , cache, meta, p] = a as Args<'attention'>;
      const window = p.slidingWindow ?? Infinity;
      let kv = 0;
      for (let s = 0; s < Math.min(meta.numSeqs, contextLens.length); s++) kv += Math.min(contextLens[s]!, window);
      // q read and out written once; K and V rows once per sequence
      return 2 * rowBytes(out, meta.numTokens) + kv * (rowBytes(cache.k, 1) + rowBytes(cache.v, 1));
    }
    case 'ropeWriteKv': {
      const [qkv, , , cache, , T, p] = a as Args<'ropeWriteKv'>;
      const q = T * p.numHeads * p.headDim * bytesPerElement(qkv.dtype);
      return rowBytes(qkv, T) + q + rowBytes(cache.k, T) + rowBytes(cache.v, T);
    }
    case 'rmsNorm':
    case 'rmsNormFp8': { // the FP8 variant also writes the E4M3 copy of out (not counted)
      const [out, x, weight, , T, residual] = a as Args<'rmsNorm'>;
      return rowBytes(x, T) + rowBytes(out, T) + (residual ? 2 * rowBytes(residual, T) : 0) + rowBytes(weight, 1);
    }
    case 'layerNorm': {
      const [out, x, weight, bias, , T, residual] = a as Args<'layerNorm'>;
      return rowBytes(x, T) + rowBytes(out, T) + (residual ? 2 * rowBytes(residual, T) : 0) + rowBytes(weight, 1) + (bias ? rowBytes(bias, 1) : 0);
    }
    case 'qkRmsNorm': {
      const [qkv, , , , T, p] = a as Args<'qkRmsNorm'>;
      return 2 * T * (p.numHeads + p.numKvHeads) * p.headDim * bytesPerElement(qkv.dtype);
    }
    case 'siluMul':
    case 'siluMulFp8': // the FP8 variant also writes the E4M3 copy of out (not counted)
    case 'geluMul': {
      const [out, gateUp, T] = a as Args<'siluMul'>;
      return rowBytes(gateUp, T) + rowBytes(out, T);
    }
    case 'gelu':
    case 'relu': {
      const [out, x, T] = a as Args<'relu'>;
      return rowBytes(x, T) + rowBytes(out, T);
    }
    case 'scale':
    case 'softcap': {
      const [out, x, , T] = a as Args<'scale'>;
      return rowBytes(x, T) + rowBytes(out, T);
    }
    case 'clamp': {
      const [out, x, , , T] = a as Args<'clamp'>;
      return rowBytes(x, T) + rowBytes(out, T);
    }
    case 'add': {
      const [out, x, y, T] = a as Args<'add'>;
      return rowBytes(x, T) + rowBytes(y, T) + rowBytes(out, T);
    }
    case 'copy': {
      const [out, , T] = a as Args<'copy'>;
      return 2 * rowBytes(out, T);
    }
    case 'embedding':
    case 'embeddingShard':
    case 'gatherRows': {
      const [out, , , T] = a as Args<'gatherRows'>;
      return 2 * rowBytes(out, T);
    }
    default:
      return 0; // moe: depends on the routing
  }
}
