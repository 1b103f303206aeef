/**
 * The runner's decode graphs (decode-graphs.ts says why and how they are padded): one per (batch bucket,
 * context bucket), captured on first use or up front (`captureAll`), replayed for every decode step they
 * fit. The runner supplies how a step's inputs are written and its forward queued (`DecodeGraphStep`);
 * this class owns the buckets, the capture protocol and the graphs' lifetime.
 */
import { contextBucket, graphBuckets, isGraphableDecode, MIN_GRAPH_CONTEXT, padDecodeBatch, type GraphCapableBackend } from './decode-graphs.js';
import type { ForwardBatch } from './forward-batch.js';

/** What the runner does for a graph: write a padded batch's inputs, queue its forward, wait for the device. */
export interface DecodeGraphStep {
  writeInputs(fb: ForwardBatch): void;
  /** queues the forward of `rows` decode rows (placeholders gathered first), attention planned for `maxSeqlenK` keys */
  queueForward(rows: number, maxSeqlenK: number): void;
  /** waits until the queued work has run (outside a capture) */
  settle(): Promise<void>;
}

export interface DecodeGraphLimits {
  readonly maxNumSeqs: number;
  readonly maxModelLen: number;
  /** the scratch KV block padded rows use */
  readonly padBlock: number;
  readonly blockSize: number;
}

export class DecodeGraphCache {
  readonly #graphs = new Map<string, { dispose(): void }>();
  readonly #buckets: number[];

  constructor(private readonly backend: GraphCapableBackend, private readonly limits: DecodeGraphLimits, private readonly step: DecodeGraphStep) {
    this.#buckets = graphBuckets(limits.maxNumSeqs);
  }

  /** The batch bucket `fb` replays as, or undefined when it is not a pure decode a graph can run. */
  bucketFor(fb: ForwardBatch): number | undefined {
    return isGraphableDecode(fb) ? this.#buckets.find((x) => x >= fb.numSeqs) : undefined;
  }

  /** Writes `fb` padded to `bucket` rows and queues the replay of its graph (capturing it on first use). */
  async run(fb: ForwardBatch, bucket: number): Promise<void> {
    let maxLen = 0;
    for (let s = 0; s < fb.numSeqs; s++) maxLen = Math.max(maxLen, fb.contextLens[s]!);
    const ctx = contextBucket(maxLen, this.limits.maxModelLen);
    this.step.writeInputs(padDecodeBatch(fb, bucket, this.limits.padBlock, this.limits.blockSize));
    this.backend.replay(this.#graphs.get(key(bucket, ctx)) ?? await this.#capture(bucket, ctx));
  }

  /**
   * Captures now the graph of every batch bucket at the first context bucket (sequences up to 512 tokens),
   * over padding rows only; returns how many it captured (those already there are kept).
   */
  async captureAll(): Promise<number> {
    const ctx = Math.min(MIN_GRAPH_CONTEXT, this.limits.maxModelLen);
    const none: ForwardBatch = {
      numSeqs: 0, numTokens: 0, tokenIds: new Int32Array(0), positions: new Int32Array(0), slotMapping: new Int32Array(0),
      cuSeqlensQ: Int32Array.of(0), contextLens: new Int32Array(0), blockTables: new Int32Array(0), maxBlocksPerSeq: 1, logitsIndices: new Int32Array(0),
    };
    let captured = 0;
    for (const bucket of this.#buckets) {
      if (this.#graphs.has(key(bucket, ctx))) continue;
      this.step.writeInputs(padDecodeBatch(none, bucket, this.limits.padBlock, this.limits.blockSize));
      await this.#capture(bucket, ctx);
      captured++;
    }
    await this.step.settle();
    return captured;
  }

  get size(): number {
    return this.#graphs.size;
  }

  dispose(): void {
    for (const g of this.#graphs.values()) g.dispose();
    this.#graphs.clear();
  }

  /** An eager run first (lazy initialisation, GEMM algorithm choice and scratch growth stay out of the graph), then the capture. */
  async #capture(bucket: number, ctx: number): Promise<{ dispose(): void }> {
    this.step.queueForward(bucket, ctx);
    await this.step.settle();
    let graph: { dispose(): void };
    this.backend.beginCapture();
    try {
      this.step.queueForward(bucket, ctx);
    } finally {
      graph = this.backend.endCapture();
    }
    this.#graphs.set(key(bucket, ctx), graph);
    return graph;
  }
}

function key(bucket: number, ctx: number): string {
  return `${bucket}:${ctx}`;
}
