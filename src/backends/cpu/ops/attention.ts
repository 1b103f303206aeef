/**
 * Paged attention for prefill, chunked prefill and decode alike.
 *
 * Seq s owns query rows cuSeqlensQ[s] .. cuSeqlensQ[s+1] (qLen of them) and has
 * kvLen = contextLens[s] tokens in the cache, this step's included. Query i sits at
 * position pos = kvLen - qLen + i and attends to kv positions 0..pos (causal), or
 * pos - slidingWindow + 1 .. pos with a sliding window. KV of position j lives in cache
 * row blockTables[s][j / blockSize] * blockSize + j % blockSize. Head h reads kv head
 * h / (numHeads / numKvHeads) (GQA / MQA).
 *
 * Score order follows HF Gemma 2: score = q.k * scale, then cap * tanh(score / cap),
 * then the ALiBi bias slope[h] * (j - pos); softmax with max subtraction, in f64.
 * An fp8 cache is dequantized (E4M3 code * scale, in f32) row by row before the math.
 */
import type { AttentionMetadata, AttentionParams, LayerKvCache, Tensor } from '../../backend.js';
import { f32Of, i32Of, internal, requireLength, requireRows } from '../cpu-tensor.js';
import { kvCacheRows, type KvRows } from './kv-cache-rows.js';

const OP = 'attention';

export function attention(out: Tensor, qkv: Tensor, cache: LayerKvCache, meta: AttentionMetadata, p: AttentionParams): void {
  const { numHeads, numKvHeads, headDim, blockSize, scale } = p;
  if (numKvHeads <= 0 || numHeads % numKvHeads !== 0) {
    throw internal(`${OP}: numHeads ${numHeads} is not a multiple of numKvHeads ${numKvHeads}`, { numHeads, numKvHeads });
  }
  if (!(blockSize > 0)) throw internal(`${OP}: blockSize must be positive, got ${blockSize}`, { blockSize });
  const { numSeqs, numTokens, maxBlocksPerSeq } = meta;
  const qWidth = numHeads * headDim;
  const kvWidth = numKvHeads * headDim;
  const rowWidth = qWidth + 2 * kvWidth;
  const qkvd = f32Of(qkv, OP, 'qkv');
  const od = f32Of(out, OP, 'out');
  requireRows(qkv, qkvd, numTokens, rowWidth, OP, 'qkv');
  requireRows(out, od, numTokens, qWidth, OP, 'out');
  const kRows = kvCacheRows(cache, 'k', kvWidth, OP);
  const vRows = kvCacheRows(cache, 'v', kvWidth, OP);
  const numCacheBlocks = Math.floor(Math.min(kRows.numSlots, vRows.numSlots) / blockSize);

  const cuQ = i32Of(meta.cuSeqlensQ, OP, 'cuSeqlensQ');
  const contextLens = i32Of(meta.contextLens, OP, 'contextLens');
  const blockTables = i32Of(meta.blockTables, OP, 'blockTables');
  requireLength(meta.cuSeqlensQ, cuQ, numSeqs + 1, OP, 'cuSeqlensQ');
  requireLength(meta.contextLens, contextLens, numSeqs, OP, 'contextLens');
  requireLength(meta.blockTables, blockTables, numSeqs * maxBlocksPerSeq, OP, 'blockTables');
  const slopes = p.alibiSlopes ? f32Of(p.alibiSlopes, OP, 'alibiSlopes') : null;
  if (p.alibiSlopes && slopes) requireLength(p.alibiSlopes, slopes, numHeads, OP, 'alibiSlopes');
  const window = p.slidingWindow ?? null;
  if (window !== null && !(window > 0)) throw internal(`${OP}: slidingWindow must be positive, got ${window}`, { window });
  const cap = p.logitSoftcap ?? null;
  if (cap !== null && !(cap > 0)) throw internal(`${OP}: logitSoftcap must be positive, got ${cap}`, { cap });

  let maxKvLen = 0;
  for (let s = 0; s < numSeqs; s++) maxKvLen = Math.max(maxKvLen, contextLens[s]);
  const kvRows = new Int32Array(maxKvLen); // kv position -> offset of its cache row
  const head: HeadScratch = { scores: new Float64Array(maxKvLen), acc: new Float64Array(headDim) };
  // the rows attention reads: the cache itself (f32), or one sequence's rows dequantized
  const seqK = kRows.f32 ?? new Float32Array(maxKvLen * kvWidth);
  const seqV = vRows.f32 ?? new Float32Array(maxKvLen * kvWidth);
  const group = numHeads / numKvHeads;

  for (let s = 0; s < numSeqs; s++) {
    const q0 = cuQ[s], q1 = cuQ[s + 1];
    const qLen = q1 - q0;
    const kvLen = contextLens[s];
    if (q0 < 0 || qLen < 0 || q1 > numTokens) throw internal(`${OP}: seq ${s} has query rows ${q0}..${q1}, outside 0..${numTokens}`, { seq: s, q0, q1, numTokens });
    if (qLen > kvLen) throw internal(`${OP}: seq ${s} has ${qLen} queries but contextLens ${kvLen}`, { seq: s, qLen, kvLen });
    resolveKvRows(kvRows, blockTables.subarray(s * maxBlocksPerSeq, (s + 1) * maxBlocksPerSeq), kvLen, blockSize, kvWidth, numCacheBlocks, s);
    if (!kRows.f32 || !vRows.f32) dequantizeSeq(kRows, vRows, seqK, seqV, kvRows, kvLen, kvWidth);
    for (let i = 0; i < qLen; i++) {
      const pos = kvLen - qLen + i;
      const lo = window === null ? 0 : Math.max(0, pos - window + 1);
      const t = q0 + i;
      for (let h = 0; h < numHeads; h++) {
        const q = qkvd.subarray(t * rowWidth + h * headDim, t * rowWidth + (h + 1) * headDim);
        const kvOff = Math.floor(h / group) * headDim;
        attendHead(head, q, seqK, seqV, kvRows, kvOff, lo, pos, scale, cap, slopes ? slopes[h] : 0);
        const o = t * qWidth + h * headDim;
        for (let d = 0; d < headDim; d++) od[o + d] = head.acc[d];
      }
    }
  }
}

/** kvRows[j] = offset of the cache row of kv position j, for j < kvLen. */
function resolveKvRows(kvRows: Int32Array, blockTable: Int32Array, kvLen: number, blockSize: number, kvWidth: number, numCacheBlocks: number, seq: number): void {
  const numBlocks = Math.ceil(kvLen / blockSize);
  if (numBlocks > blockTable.length) throw internal(`${OP}: seq ${seq} needs ${numBlocks} blocks, block table has ${blockTable.length}`, { seq, numBlocks });
  for (let b = 0; b < numBlocks; b++) {
    const block = blockTable[b];
    if (block < 0 || block >= numCacheBlocks) {
      throw internal(`${OP}: blockTables[${seq}][${b}] = ${block} is outside the cache (${numCacheBlocks} blocks)`, { seq, index: b, block, numCacheBlocks });
    }
    const end = Math.min(blockSize, kvLen - b * blockSize);
    for (let o = 0; o < end; o++) kvRows[b * blockSize + o] = (block * blockSize + o) * kvWidth;
  }
}

/** Row j of seqK / seqV = the cache rows of kv position j, dequantized; kvRows then points into them. */
function dequantizeSeq(kRows: KvRows, vRows: KvRows, seqK: Float32Array, seqV: Float32Array, kvRows: Int32Array, kvLen: number, kvWidth: number): void {
  for (let j = 0; j < kvLen; j++) {
    const slot = kvRows[j]! / kvWidth;
    kRows.read(slot, seqK, j * kvWidth);
    vRows.read(slot, seqV, j * kvWidth);
    kvRows[j] = j * kvWidth;
  }
}

interface HeadScratch {
  readonly scores: Float64Array;
  /** the head's output */
  readonly acc: Float64Array;
}

/** One query head over kv positions lo..pos: acc = softmax(scores) . V. */
function attendHead(
  head: HeadScratch, q: Float32Array, k: Float32Array, v: Float32Array, kvRows: Int32Array, kvOff: number,
  lo: number, pos: number, scale: number, cap: number | null, slope: number,
): void {
  const { scores, acc } = head;
  const headDim = q.length;
  let max = -Infinity;
  for (let j = lo; j <= pos; j++) {
    const kOff = kvRows[j] + kvOff;
    let dot = 0;
    for (let d = 0; d < headDim; d++) dot += q[d] * k[kOff + d];
    let score = dot * scale;
    if (cap !== null) score = cap * Math.tanh(score / cap);
    score += slope * (j - pos);
    scores[j - lo] = score;
    if (score > max) max = score;
  }
  let sum = 0;
  for (let j = 0; j <= pos - lo; j++) {
    const e = Math.exp(scores[j] - max);
    scores[j] = e;
    sum += e;
  }
  acc.fill(0);
  for (let j = lo; j <= pos; j++) {
    const w = scores[j - lo] / sum;
    const vOff = kvRows[j] + kvOff;
    for (let d = 0; d < headDim; d++) acc[d] += w * v[vOff + d];
  }
}
