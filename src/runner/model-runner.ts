/**
 * ModelRunner: owns the decoder, the KV pool and the step inputs on the backend.
 * `forward` runs one flattened batch and returns its logits rows; `execute` is the
 * engine's entry point (forward + sampling for the entries that sample).
 */
import type { Backend, Tensor } from '../backends/backend.js';
import { DecoderModel, type DeviceInputs } from '../models/decoder.js';
import { allTensors, type ModelWeights } from '../models/model-weights.js';
import type { ModelSpec } from '../models/spec.js';
import { sampleRow, type SampleResult, type SequenceSamplingState } from '../sampling/index.js';
import type { ForwardBatch } from './forward-batch.js';
import { buildForwardBatch, type BatchSeq } from './input-builder.js';
import { KvCachePool } from './kv-cache.js';

export interface RunnerConfig {
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly maxModelLen: number;
  /** token budget of one step */
  readonly maxNumBatchedTokens: number;
  readonly maxNumSeqs: number;
  /** rows of logits one forward may return (default maxNumSeqs; raise it for all-position logits) */
  readonly maxNumLogits?: number;
}

export interface RunnerSeq extends BatchSeq {
  readonly samplingState: SequenceSamplingState;
}

export interface RunnerEntry {
  readonly seq: RunnerSeq;
  readonly numNewTokens: number;
}

export class ModelRunner {
  readonly model: DecoderModel;
  readonly kvCache: KvCachePool;
  readonly maxBlocksPerSeq: number;
  private readonly inputs: DeviceInputs & { meta: { cuSeqlensQ: Tensor; contextLens: Tensor; blockTables: Tensor } };
  private readonly inputTensors: Tensor[];
  private readonly scratch: Float32Array;

  constructor(
    readonly backend: Backend,
    readonly spec: ModelSpec,
    readonly weights: ModelWeights,
    readonly config: RunnerConfig,
  ) {
    const { maxNumBatchedTokens: T, maxNumSeqs, blockSize, maxModelLen, numBlocks } = config;
    const S = Math.min(maxNumSeqs, T);
    this.maxBlocksPerSeq = Math.ceil(maxModelLen / blockSize);
    const maxNumLogits = Math.max(S, config.maxNumLogits ?? 0);
    this.model = new DecoderModel(spec, backend, weights, { maxNumTokens: T, maxNumSeqs: S, maxNumLogits, blockSize });
    this.kvCache = new KvCachePool(backend, spec, numBlocks, blockSize);
    const i32 = (n: number) => backend.empty([n], 'i32');
    const tokenIds = i32(T), positions = i32(T), slotMapping = i32(T), logitsIndices = i32(maxNumLogits);
    const cuSeqlensQ = i32(S + 1), contextLens = i32(S), blockTables = i32(S * this.maxBlocksPerSeq);
    this.inputTensors = [tokenIds, positions, slotMapping, logitsIndices, cuSeqlensQ, contextLens, blockTables];
    this.inputs = {
      tokenIds, positions, slotMapping, logitsIndices,
      meta: { numSeqs: 0, numTokens: 0, cuSeqlensQ, contextLens, blockTables, maxBlocksPerSeq: this.maxBlocksPerSeq, maxSeqlenQ: 0, maxSeqlenK: 0, isDecode: false },
    };
    this.scratch = new Float32Array(spec.vocabSize);
  }

  get blockSize(): number { return this.config.blockSize; }
  get numBlocks(): number { return this.config.numBlocks; }
  get maxModelLen(): number { return this.config.maxModelLen; }
  get eosTokenIds(): readonly number[] { return this.spec.eosTokenIds; }

  /** Runs one flattened batch; returns f32 logits [logitsIndices.length, vocab]. */
  async forward(fb: ForwardBatch): Promise<Float32Array> {
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
    return b.downloadF32(b.view(logits, [numLogits, this.spec.vocabSize]));
  }

  /** Forward + sampling: one result per entry, null where the entry is a prefill chunk that does not sample. */
  async execute(batch: { readonly entries: readonly RunnerEntry[] }): Promise<Array<SampleResult | null>> {
    const entries = batch.entries;
    if (entries.length === 0) return [];
    const samples = entries.map((e) => e.seq.numCachedTokens + e.numNewTokens === e.seq.tokenIds.length);
    const fb = buildForwardBatch(entries, this.config.blockSize, this.maxBlocksPerSeq, samples);
    const logits = await this.forward(fb);
    const V = this.spec.vocabSize;
    let row = 0;
    return entries.map((e, i) => {
      if (!samples[i]) return null;
      const r = logits.subarray(row * V, (row + 1) * V);
      row++;
      return sampleRow(r, e.seq.samplingState, this.scratch);
    });
  }

  dispose(): void {
    this.model.dispose();
    this.kvCache.dispose();
    for (const t of this.inputTensors) this.backend.free(t);
    for (const t of allTensors(this.weights)) this.backend.free(t);
  }
}
