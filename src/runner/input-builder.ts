/**
 * Flattens scheduled sequences into a ForwardBatch: token ids, positions, slot
 * mapping, cumulative query lengths, context lengths and padded block tables. A placeholder
 * token (async scheduling: still being sampled by the previous step) becomes a row of
 * prevSampledRows.
 */
import { placeholderRow } from '../engine/executor.js';
import { PeregrineError } from '../errors.js';
import type { ForwardBatch } from './forward-batch.js';

/** What the builder needs of a sequence (engine/Sequence satisfies it). */
export interface BatchSeq {
  readonly tokenIds: readonly number[];
  readonly numCachedTokens: number;
  readonly blockTable: readonly number[];
}

export interface BatchEntry {
  readonly seq: BatchSeq;
  /** computes tokens [numCachedTokens, numCachedTokens + numNewTokens) */
  readonly numNewTokens: number;
}

/**
 * @param maxBlocksPerSeq fixed width of the block-table matrix (ceil(maxModelLen / blockSize))
 * @param logitsFor which entries yield a logits row (default: all)
 */
export function buildForwardBatch(entries: readonly BatchEntry[], blockSize: number, maxBlocksPerSeq: number, logitsFor?: readonly boolean[]): ForwardBatch {
  const numSeqs = entries.length;
  let numTokens = 0;
  for (const e of entries) numTokens += e.numNewTokens;
  const tokenIds = new Int32Array(numTokens);
  const positions = new Int32Array(numTokens);
  const slotMapping = new Int32Array(numTokens);
  const cuSeqlensQ = new Int32Array(numSeqs + 1);
  const contextLens = new Int32Array(numSeqs);
  const blockTables = new Int32Array(numSeqs * maxBlocksPerSeq).fill(-1);
  const logitsIdx: number[] = [];
  let prevSampledRows: Int32Array | undefined;

  let t = 0;
  entries.forEach((e, s) => {
    const { seq, numNewTokens } = e;
    const start = seq.numCachedTokens;
    const end = start + numNewTokens;
    if (numNewTokens <= 0 || end > seq.tokenIds.length) {
      throw new PeregrineError('PGN_ERR_INTERNAL', `entry ${s}: cannot compute tokens [${start}, ${end}) of a sequence of ${seq.tokenIds.length}`);
    }
    const numBlocks = Math.ceil(end / blockSize);
    if (numBlocks > seq.blockTable.length || numBlocks > maxBlocksPerSeq) {
      throw new PeregrineError('PGN_ERR_INTERNAL', `entry ${s}: ${end} tokens need ${numBlocks} blocks, table has ${seq.blockTable.length} (max ${maxBlocksPerSeq})`);
    }
    for (let p = start; p < end; p++, t++) {
      const id = seq.tokenIds[p]!;
      if (id < 0) {
        prevSampledRows ??= new Int32Array(numTokens).fill(-1);
        prevSampledRows[t] = placeholderRow(id);
      } else {
        tokenIds[t] = id;
      }
      positions[t] = p;
      slotMapping[t] = seq.blockTable[Math.floor(p / blockSize)]! * blockSize + (p % blockSize);
    }
    cuSeqlensQ[s + 1] = t;
    contextLens[s] = end;
    for (let j = 0; j < numBlocks; j++) blockTables[s * maxBlocksPerSeq + j] = seq.blockTable[j]!;
    if (!logitsFor || logitsFor[s]) logitsIdx.push(t - 1);
  });

  return {
    numSeqs,
    numTokens,
    tokenIds,
    positions,
    slotMapping,
    cuSeqlensQ,
    contextLens,
    blockTables,
    maxBlocksPerSeq,
    logitsIndices: Int32Array.from(logitsIdx),
    ...(prevSampledRows && { prevSampledRows }),
  };
}
