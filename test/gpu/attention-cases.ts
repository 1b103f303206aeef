/**
 * Shared pieces of the paged-attention GPU suites (cuda-attention, kv-fp8): the case shape, a
 * batch laid out in the paged cache (block tables drawn from a shuffled pool) with its metadata on
 * either backend, and the eager / graph-replay runs that check a decode launch.
 */
import { leadingDecodeSeqs, type AttentionMetadata } from '../../src/backends/backend.js';
import type { CudaBackend } from '../../src/backends/cuda/cuda-backend.js';
import { shuffled, type Harness, type Pair } from './cuda-harness.js';

/** One attention launch checked against the CPU reference. */
export interface AttentionCase {
  readonly headDim: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  /** per sequence: [queries this step, tokens in the cache after it] */
  readonly seqs: readonly (readonly [number, number])[];
  readonly dtype?: 'bf16' | 'f16';
  readonly slidingWindow?: number;
  /** the launch's maxSeqlenK (default the longest context): sets the decode split count */
  readonly maxSeqlenK?: number;
  /** decode: also run it eagerly again and from a captured graph, checking every run */
  readonly replays?: boolean;
}

/** relative L2 error allowed for the attention output, per activation dtype */
export const ATTENTION_TOL = { bf16: 2e-2, f16: 5e-3 } as const;

/** A case's sequences in the paged cache: numBlocks blocks (3 spare), each sequence's from a shuffled pool. */
export interface PagedBatch {
  readonly numSeqs: number;
  readonly numTokens: number;
  readonly maxBlocksPerSeq: number;
  readonly numBlocks: number;
  /** The metadata on one backend (`side` picks the CPU or GPU tensor of each upload). */
  meta(side: (p: Pair) => Pair['cpu']): AttentionMetadata;
}

/** Lays `c`'s sequences out in blocks of `blockSize` (block tables padded with -1, one entry to spare). */
export function pagedBatch(h: Harness, c: AttentionCase, blockSize: number): PagedBatch {
  const { seqs } = c;
  const numSeqs = seqs.length;
  const numTokens = seqs.reduce((a, [q]) => a + q, 0);
  const maxBlocksPerSeq = Math.max(...seqs.map(([, k]) => Math.ceil(k / blockSize))) + 1;
  const numBlocks = seqs.reduce((a, [, k]) => a + Math.ceil(k / blockSize), 0) + 3;
  const pool = shuffled(numBlocks, h.r);
  const tables = new Int32Array(numSeqs * maxBlocksPerSeq).fill(-1);
  let next = 0;
  seqs.forEach(([, k], s) => {
    for (let b = 0; b < Math.ceil(k / blockSize); b++) tables[s * maxBlocksPerSeq + b] = pool[next++]!;
  });
  const cuQ = new Int32Array(numSeqs + 1);
  seqs.forEach(([q], s) => { cuQ[s + 1] = cuQ[s]! + q; });
  return {
    numSeqs, numTokens, maxBlocksPerSeq, numBlocks,
    meta: (side) => ({
      numSeqs, numTokens, maxBlocksPerSeq,
      cuSeqlensQ: side(h.ints([numSeqs + 1], cuQ)),
      contextLens: side(h.ints([numSeqs], Int32Array.from(seqs.map(([, k]) => k)))),
      blockTables: side(h.ints([numSeqs, maxBlocksPerSeq], tables)),
      maxSeqlenQ: Math.max(...seqs.map(([q]) => q)),
      maxSeqlenK: c.maxSeqlenK ?? Math.max(...seqs.map(([, k]) => k)),
      isDecode: seqs.every(([q]) => q === 1),
      numDecodeSeqs: leadingDecodeSeqs(cuQ, numSeqs),
    }),
  };
}

/**
 * Captures `launch` into a CUDA graph (recorded, not run), then for each of `runs` in order: poisons
 * `out` with NaN, launches (runs named 'graph ...' replay the graph, the others run eagerly) and
 * calls `check(run)`. The graph is freed at the end.
 */
export async function checkGraphRuns(
  gpu: CudaBackend, launch: () => void, out: Pair, runs: readonly string[], check: (run: string) => Promise<void>,
): Promise<void> {
  const numel = out.gpu.shape.reduce((a, b) => a * b, 1);
  gpu.beginCapture();
  let graph;
  try {
    launch();
  } finally {
    graph = gpu.endCapture();
  }
  try {
    for (const run of runs) {
      gpu.writeF32(out.gpu, new Float32Array(numel).fill(NaN));
      if (run.startsWith('graph')) gpu.replay(graph);
      else launch();
      await check(run);
    }
  } finally {
    graph.dispose();
  }
}
