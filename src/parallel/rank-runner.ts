/**
 * One tensor-parallel rank's model runner: its decoder shard (with the group's communicator),
 * its KV cache (its KV heads) and the step inputs. Every rank runs the same ForwardBatch;
 * rank 0 takes the logits.
 *
 * The eager path of runner/ModelRunner. Once ModelRunner takes a communicator (one line: pass
 * it to DecoderModel), ranks can use it and get its CUDA graphs.
 */
import type { Backend, Tensor } from '../backends/backend.js';
import { DecoderModel, type DeviceInputs } from '../models/decoder.js';
import { allTensors, type ModelWeights } from '../models/model-weights.js';
import type { ModelSpec } from '../models/spec.js';
import type { ForwardBatch } from '../runner/forward-batch.js';
import { KvCachePool } from '../runner/kv-cache.js';
import type { Communicator } from './communicator.js';

export interface RankRunnerConfig {
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly maxModelLen: number;
  readonly maxNumBatchedTokens: number;
  readonly maxNumSeqs: number;
  /** rows of logits one forward may return (default maxNumSeqs) */
  readonly maxNumLogits?: number;
}

/** What a CUDA backend offers to wait for queued work without blocking the event loop. */
interface DeviceEvents {
  readonly stream: unknown;
  createEvent(opts: { timing?: boolean }): { record(stream: never): void; query(): boolean; destroy(): void };
}

export class RankRunner {
  readonly model: DecoderModel;
  readonly kvCache: KvCachePool;
  readonly maxBlocksPerSeq: number;
  private readonly inputs: DeviceInputs;
  private readonly inputTensors: Tensor[];
  private readonly done: ReturnType<DeviceEvents['createEvent']> | null;

  constructor(
    readonly backend: Backend,
    readonly spec: ModelSpec,
    readonly weights: ModelWeights,
    readonly config: RankRunnerConfig,
    comm: Communicator | null,
  ) {
    const { maxNumBatchedTokens: T, maxNumSeqs, blockSize, maxModelLen, numBlocks } = config;
    const S = Math.min(maxNumSeqs, T);
    const maxNumLogits = Math.max(S, config.maxNumLogits ?? 0);
    this.maxBlocksPerSeq = Math.ceil(maxModelLen / blockSize);
    this.model = new DecoderModel(spec, backend, weights, { maxNumTokens: T, maxNumSeqs: S, maxNumLogits, blockSize }, comm);
    this.kvCache = new KvCachePool(backend, spec, numBlocks, blockSize);
    const i32 = (n: number) => backend.empty([n], 'i32');
    const tokenIds = i32(T), positions = i32(T), slotMapping = i32(T), logitsIndices = i32(maxNumLogits);
    const cuSeqlensQ = i32(S + 1), contextLens = i32(S), blockTables = i32(S * this.maxBlocksPerSeq);
    this.inputTensors = [tokenIds, positions, slotMapping, logitsIndices, cuSeqlensQ, contextLens, blockTables];
    this.inputs = {
      tokenIds, positions, slotMapping, logitsIndices,
      meta: { numSeqs: 0, numTokens: 0, cuSeqlensQ, contextLens, blockTables, maxBlocksPerSeq: this.maxBlocksPerSeq, maxSeqlenQ: 0, maxSeqlenK: 0, isDecode: false },
    };
    this.done = 'createEvent' in backend ? (backend as unknown as DeviceEvents).createEvent({ timing: false }) : null;
  }

  /**
   * Runs one batch on this rank's shard. Resolves to f32 logits [logitsIndices.length, vocab]
   * when `wantLogits` (rank 0), else to null once the device has finished the step.
   */
  async forward(fb: ForwardBatch, wantLogits: boolean): Promise<Float32Array | null> {
    const b = this.backend;
    const inp = this.inputs;
    b.writeI32(inp.tokenIds, fb.tokenIds);
    b.writeI32(inp.positions, fb.positions);
    b.writeI32(inp.slotMapping, fb.slotMapping);
    b.writeI32(inp.logitsIndices, fb.logitsIndices);
    b.writeI32(inp.meta.cuSeqlensQ, fb.cuSeqlensQ);
    b.writeI32(inp.meta.contextLens, fb.contextLens);
    b.writeI32(inp.meta.blockTables, fb.blockTables);
    let maxSeqlenQ = 0, maxSeqlenK = 0;
    for (let s = 0; s < fb.numSeqs; s++) {
      maxSeqlenQ = Math.max(maxSeqlenQ, fb.cuSeqlensQ[s + 1]! - fb.cuSeqlensQ[s]!);
      maxSeqlenK = Math.max(maxSeqlenK, fb.contextLens[s]!);
    }
    const meta = { ...inp.meta, numSeqs: fb.numSeqs, numTokens: fb.numTokens, maxSeqlenQ, maxSeqlenK, isDecode: maxSeqlenQ === 1 };
    const numLogits = fb.logitsIndices.length;
    const logits = this.model.forward({ ...inp, meta }, this.kvCache.layers, numLogits);
    await this.deviceDone();
    return wantLogits ? b.downloadF32(b.view(logits, [numLogits, this.spec.vocabSize])) : null;
  }

  /**
   * Waits for the queued step by polling an event, so the event loop stays free: a peer's
   * death is noticed (and the communicator aborted) while collectives wait for it.
   */
  private async deviceDone(): Promise<void> {
    if (!this.done) return;
    this.done.record((this.backend as unknown as DeviceEvents).stream as never);
    while (!this.done.query()) await new Promise((resolve) => setImmediate(resolve));
  }

  dispose(): void {
    this.done?.destroy();
    this.model.dispose();
    this.kvCache.dispose();
    for (const t of this.inputTensors) this.backend.free(t);
    for (const t of allTensors(this.weights)) this.backend.free(t);
  }
}
