/**
 * CUDA graphs for decode steps: one graph per padded batch size (1, 2, 4, 8, 16, 32, ...),
 * captured on first use and replayed every step. A decode batch of n sequences runs as the
 * graph of the smallest bucket >= n; the padding rows point at a scratch KV block the
 * engine never hands out, so they write and read only that block.
 *
 * Graph capture needs every input at a fixed address (the runner's step tensors) and no
 * host-dependent launch shapes: the captured step assumes maxSeqlenK = maxModelLen, and
 * the kernels read each sequence's real length from contextLens.
 */
import type { Backend } from '../backends/backend.js';
import type { ForwardBatch } from './forward-batch.js';

/** The part of a backend that captures and replays graphs (CudaBackend). */
export interface GraphCapableBackend extends Backend {
  beginCapture(): void;
  endCapture(): { dispose(): void };
  replay(graph: { dispose(): void }): void;
}

export function canCaptureGraphs(b: Backend): b is GraphCapableBackend {
  const g = b as Partial<GraphCapableBackend>;
  return typeof g.beginCapture === 'function' && typeof g.endCapture === 'function' && typeof g.replay === 'function';
}

/** smallest context-length bucket of the decode graphs */
export const MIN_GRAPH_CONTEXT = 512;

/**
 * The context bucket a decode step of longest context `maxLen` runs as: 512, 2048, 8192, ... (x4), at most
 * maxModelLen. The decode attention's split count is fixed at capture, and short contexts want fewer splits.
 */
export function contextBucket(maxLen: number, maxModelLen: number): number {
  let ctx = MIN_GRAPH_CONTEXT;
  while (ctx < maxLen) ctx *= 4;
  return Math.min(ctx, maxModelLen);
}

/** Padded batch sizes: powers of two up to maxNumSeqs (which is always a bucket). */
export function graphBuckets(maxNumSeqs: number): number[] {
  const out: number[] = [];
  for (let b = 1; b < maxNumSeqs; b *= 2) out.push(b);
  out.push(maxNumSeqs);
  return out;
}

/** A pure decode batch whose every sequence yields logits in order (what a graph can replay). */
export function isGraphableDecode(fb: ForwardBatch): boolean {
  if (fb.numTokens !== fb.numSeqs || fb.logitsIndices.length !== fb.numSeqs) return false;
  for (let i = 0; i < fb.numSeqs; i++) if (fb.logitsIndices[i] !== i) return false;
  return true;
}

/** The batch padded to `size` sequences, the padding rows on `padBlock`. */
export function padDecodeBatch(fb: ForwardBatch, size: number, padBlock: number, blockSize: number): ForwardBatch {
  const n = fb.numSeqs;
  const W = fb.maxBlocksPerSeq;
  const pad = <T extends Int32Array>(a: T, len: number, fill: number): Int32Array => {
    const out = new Int32Array(len).fill(fill);
    out.set(a.subarray(0, Math.min(a.length, len)));
    return out;
  };
  const cuSeqlensQ = new Int32Array(size + 1);
  for (let i = 0; i <= size; i++) cuSeqlensQ[i] = i;
  const blockTables = pad(fb.blockTables, size * W, -1);
  for (let s = n; s < size; s++) blockTables[s * W] = padBlock;
  return {
    numSeqs: size,
    numTokens: size,
    tokenIds: pad(fb.tokenIds, size, 0),
    positions: pad(fb.positions, size, 0),
    slotMapping: pad(fb.slotMapping, size, padBlock * blockSize),
    cuSeqlensQ,
    contextLens: pad(fb.contextLens, size, 1),
    blockTables,
    maxBlocksPerSeq: W,
    logitsIndices: Int32Array.from({ length: size }, (_, i) => i),
    ...(fb.prevSampledRows && { prevSampledRows: pad(fb.prevSampledRows, size, -1) }),
  };
}
