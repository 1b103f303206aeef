/**
 * Flattens scheduled sequences into a ForwardBatch: token ids, positions, slot
 * mapping, cumulative query lengths, context lengths and block tables as wide as this batch needs
 * (the most blocks any of its sequences reaches, not ceil(maxModelLen / blockSize): at a 128k context
 * that would be 8192 entries a row, megabytes a step to fill, copy and send to tensor-parallel ranks,
 * for tables mostly unused; the runner lays the rows out at its own stride). A placeholder
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
 * @param maxBlocksPerSeq the most blocks a sequence may have (ceil(maxModelLen / blockSize)); the batch's
 *   table is as wide as its longest sequence needs
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
  let width = 1;
  for (const e of entries) width = Math.max(width, Math.ceil((e.seq.numCachedTokens + e.numNewTokens) / blockSize));
  width = Math.min(width, maxBlocksPerSeq); // a longer sequence fails its check below
  const blockTables = new Int32Array(numSeqs * width).fill(-1);
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
    for (let j = 0; j < numBlocks; j++) blockTables[s * width + j] = seq.blockTable[j]!;
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
    maxBlocksPerSeq: width,
    logitsIndices: Int32Array.from(logitsIdx),
    ...(prevSampledRows && { prevSampledRows }),
  };
}
