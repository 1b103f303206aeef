/**
 * ModelRunner: owns the decoder, the KV pool and the step inputs on the backend.
 * `forward` runs one flattened batch and returns its logits rows; `execute` is the
 * engine's entry point (forward + sampling for the entries that sample).
 *
 * With a communicator it is one tensor-parallel rank (parallel/TpGroup): its decoder shard
 * all-reduces and all-gathers through it, every rank runs the same ForwardBatch (`forwardStep`
 * on ranks 1..tp-1) and rank 0 samples (`executeForward`). Decode graphs stay on: NCCL
 * collectives (>= 2.9, one GPU per process) are captured like kernels, and every rank makes
 * the same capture decisions, as NCCL requires, since they see the same batches and config.
 *
 * Async scheduling (`launch`): the step is queued and its sampled ids come back later through
 * pinned memory (result-slots.ts), while the engine schedules the next one. Placeholder tokens
 * (the previous launch's samples) are read on the device by gatherTokenIds from `sampledIds`,
 * before the embedding; decode graphs capture that gather too.
 */
import { leadingDecodeSeqs, type Backend, type Tensor } from '../backends/backend.js';
import type { ExecuteResults, LaunchedStep } from '../engine/executor.js';
import { PeregrineError } from '../errors.js';
import { DecoderModel, type DeviceInputs } from '../models/decoder.js';
import { allTensors, type ModelWeights } from '../models/model-weights.js';
import type { ModelSpec } from '../models/spec.js';
import type { Communicator } from '../parallel/communicator.js';
import { numPromptLogprobRows, sampleRow, type SequenceSamplingState } from '../sampling/index.js';
import type { ForwardBatch } from './forward-batch.js';
import { buildForwardBatch, type BatchSeq } from './input-builder.js';
import { KvCachePool, type KvCacheOptions } from './kv-cache.js';
import { DecodeGraphCache } from './decode-graph-cache.js';
import { canCaptureGraphs } from './decode-graphs.js';
import { LaunchedSampling } from './launched-sampling.js';
import { StepTimer, stepKindOf, type StepTiming, type StepTotals } from './step-timing.js';
import { pollUntilDone, stepTimeoutMs } from './device-wait.js';
import { createDeviceSampler, downloadRowRange, sampleOnDevice, type DeviceSampler } from './device-sampling.js';
import { promptLogprobs, withPromptLogprobRows } from './prompt-logprob-rows.js';

export { withPromptLogprobRows };

/** What a CUDA backend offers to wait for queued work without blocking the event loop. */
interface EventBackend extends Backend {
  readonly stream: unknown;
  createEvent(opts: { timing?: boolean }): DeviceEvent;
}
interface DeviceEvent {
  record(stream: never): void;
  query(): boolean;
  destroy(): void;
}

/** logits rows beyond one per sequence, by default: prompt-logprob rows of one step */
export const DEFAULT_PROMPT_LOGPROB_ROWS = 128;

export interface RunnerConfig {
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly maxModelLen: number;
  /** token budget of one step */
  readonly maxNumBatchedTokens: number;
  readonly maxNumSeqs: number;
  /**
   * rows of logits one forward may return (default maxNumSeqs + DEFAULT_PROMPT_LOGPROB_ROWS; raise
   * it for all-position logits): one per sampling sequence, the rest for prompt logprobs
   */
  readonly maxNumLogits?: number;
  /** replay decode steps as CUDA graphs where the backend can (default true; env PEREGRINE_CUDA_GRAPHS=0 turns them off) */
  readonly enableCudaGraphs?: boolean;
  /** KV cache storage (default 'auto': the activation dtype; 'fp8': E4M3) and, for fp8, the checkpoint's per-layer scales (default 1.0) */
  readonly kvCache?: KvCacheOptions;
  /**
   * Tensor parallel with async scheduling: every rank takes rank 0's sampled ids (a broadcast
   * before the placeholder gather, captured in the decode graphs) so all ranks can launch steps
   * whose tokens rank 0 has not downloaded yet. Every rank's runner must have the same value.
   */
  readonly broadcastSampledIds?: boolean;
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
  /** logits rows a step has for prompt logprobs beyond its sampling rows */
  readonly maxNumPromptLogprobRows: number;
  private readonly inputs: DeviceInputs & { meta: { cuSeqlensQ: Tensor; contextLens: Tensor; blockTables: Tensor } };
  private readonly inputTensors: Tensor[];
  private readonly scratch: Float32Array;
  /** decode steps as CUDA graphs, where the backend captures them (null: every step eager) */
  private readonly graphs: DecodeGraphCache | null;
  /** made at the first execute; null where the backend has none (or PEREGRINE_GPU_SAMPLING=0) */
  private sampler: DeviceSampler | null | undefined;
  /** how long a tensor-parallel step may wait for its collectives (PEREGRINE_STEP_TIMEOUT_S) */
  private readonly stepTimeoutMs = stepTimeoutMs();
  /** tensor parallel on a device: polled after each step, so the event loop notices a dead peer */
  private readonly done: DeviceEvent | null;
  /** i32 [T]: where >= 0, the row of `sampledIds` whose id replaces the token (placeholders) */
  private readonly srcIndex: Tensor;
  /** i32 [S]: the last launch's sampled ids, in sampling-row order */
  private readonly sampledIds: Tensor;
  private readonly sampledIdsLength: number;
  private readonly noPlaceholders: Int32Array;
  private readonly timer: StepTimer;
  private numUncollected = 0;
  /** sampling rows of the last launch (null after a step that was not launched): what placeholders may name */
  private lastLaunchRows: number | null = null;
  private readonly launchedSampling: LaunchedSampling;

  /**
   * @param spec what this runner's decoder runs: the model's spec, or a rank's shardSpec
   * @param comm the tensor-parallel group's communicator (default none: one device)
   */
  constructor(
    readonly backend: Backend,
    readonly spec: ModelSpec,
    readonly weights: ModelWeights,
    readonly config: RunnerConfig,
    private readonly comm: Communicator | null = null,
  ) {
    const { maxNumBatchedTokens: T, maxNumSeqs, blockSize, maxModelLen, numBlocks } = config;
    const S = Math.min(maxNumSeqs, T);
    this.maxBlocksPerSeq = Math.ceil(maxModelLen / blockSize);
    const maxNumLogits = Math.max(S, config.maxNumLogits ?? S + DEFAULT_PROMPT_LOGPROB_ROWS);
    this.maxNumPromptLogprobRows = maxNumLogits - S;
    this.model = new DecoderModel(spec, backend, weights, { maxNumTokens: T, maxNumSeqs: S, maxNumLogits, blockSize }, comm);
    // one block more than the engine sees: the scratch block of padded graph rows
    this.kvCache = new KvCachePool(backend, spec, numBlocks + 1, blockSize, config.kvCache);
    const graphsOn = (config.enableCudaGraphs ?? true) && process.env.PEREGRINE_CUDA_GRAPHS !== '0';
    this.graphs = graphsOn && canCaptureGraphs(backend)
      ? new DecodeGraphCache(backend, { maxNumSeqs: S, maxModelLen, padBlock: numBlocks, blockSize }, {
        writeInputs: (fb) => this.writeInputs(fb),
        queueForward: (rows, maxSeqlenK) => {
          this.gatherPlaceholders(rows);
          this.model.forward({ ...this.inputs, meta: { ...this.inputs.meta, numSeqs: rows, numTokens: rows, maxSeqlenQ: 1, maxSeqlenK, isDecode: true } }, this.kvCache.layers, rows);
        },
        settle: () => (this.done ? this.deviceDone() : this.backend.synchronize()),
      })
      : null;
    const i32 = (n: number) => backend.empty([n], 'i32');
    const tokenIds = i32(T), positions = i32(T), slotMapping = i32(T), logitsIndices = i32(maxNumLogits);
    const cuSeqlensQ = i32(S + 1), contextLens = i32(S), blockTables = i32(S * this.maxBlocksPerSeq);
    this.srcIndex = i32(T);
    this.sampledIds = i32(S);
    this.sampledIdsLength = S;
    this.noPlaceholders = new Int32Array(T).fill(-1);
    this.inputTensors = [tokenIds, positions, slotMapping, logitsIndices, cuSeqlensQ, contextLens, blockTables, this.srcIndex, this.sampledIds];
    this.inputs = {
      tokenIds, positions, slotMapping, logitsIndices,
      meta: { numSeqs: 0, numTokens: 0, cuSeqlensQ, contextLens, blockTables, maxBlocksPerSeq: this.maxBlocksPerSeq, maxSeqlenQ: 0, maxSeqlenK: 0, isDecode: false },
    };
    this.scratch = new Float32Array(spec.vocabSize);
    this.done = comm && 'createEvent' in backend ? (backend as EventBackend).createEvent({ timing: false }) : null;
    this.timer = new StepTimer(backend);
    this.launchedSampling = new LaunchedSampling(backend, config.maxNumSeqs, spec.vocabSize, this.sampledIds, this.scratch);
  }

  get blockSize(): number { return this.config.blockSize; }
  get numBlocks(): number { return this.config.numBlocks; }
  get maxModelLen(): number { return this.config.maxModelLen; }
  get eosTokenIds(): readonly number[] { return this.spec.eosTokenIds; }

  /** Runs one flattened batch; returns f32 logits [logitsIndices.length, vocab]. Decode steps replay CUDA graphs where possible. */
  async forward(fb: ForwardBatch): Promise<Float32Array> {
    return this.backend.downloadF32(await this.forwardToDevice(fb));
  }

  /** A tensor-parallel rank's step without logits (ranks 1..tp-1): resolves once the device has run it. */
  async forwardStep(fb: ForwardBatch): Promise<void> {
    await this.forwardToDevice(fb);
  }

  /** `forward` without the download: the logits stay on the backend, f32 [logitsIndices.length, vocab]. */
  private async forwardToDevice(fb: ForwardBatch, waitForDevice = true): Promise<Tensor> {
    const bucket = this.graphs?.bucketFor(fb);
    let logits: Tensor;
    if (bucket !== undefined) {
      await this.graphs!.run(fb, bucket);
      logits = this.backend.view(this.model.logits, [fb.numSeqs, this.spec.vocabSize]);
    } else {
      logits = await this.forwardEager(fb);
    }
    if (waitForDevice) await this.deviceDone();
    return logits;
  }

  /**
   * Tensor parallel: waits for the queued step by polling an event, so the event loop stays
   * free while collectives wait for the other ranks (a peer's death aborts the communicator
   * from there); a step that outlives PEREGRINE_STEP_TIMEOUT_S (a rank alive but stuck) aborts
   * the communicator and fails with PGN_ERR_ENGINE_DEAD. One device: nothing to wait for here.
   */
  private async deviceDone(): Promise<void> {
    if (!this.done) return;
    const done = this.done;
    done.record((this.backend as EventBackend).stream as never);
    await this.waitBounded(() => done.query());
  }

  /** Polls `isDone` until the step deadline; past it, aborts the communicator (collectives in flight return) and throws. */
  private async waitBounded(isDone: () => boolean): Promise<void> {
    try {
      await pollUntilDone(isDone, this.stepTimeoutMs, 'a tensor-parallel step');
    } catch (e) {
      this.comm?.abort((e as Error).message);
      throw e;
    }
  }

  private writeInputs(fb: ForwardBatch): void {
    const b = this.backend;
    const inp = this.inputs;
    b.writeI32(inp.tokenIds, fb.tokenIds);
    b.writeI32(inp.positions, fb.positions);
    b.writeI32(inp.slotMapping, fb.slotMapping);
    b.writeI32(inp.logitsIndices, fb.logitsIndices);
    b.writeI32(inp.meta.cuSeqlensQ, fb.cuSeqlensQ);
    b.writeI32(inp.meta.contextLens, fb.contextLens);
    // the batch's table is as wide as its longest sequence needs; the device rows are maxBlocksPerSeq apart
    if (fb.maxBlocksPerSeq === this.maxBlocksPerSeq) b.writeI32(inp.meta.blockTables, fb.blockTables);
    else b.writeI32Rows(inp.meta.blockTables, fb.blockTables, fb.numSeqs, fb.maxBlocksPerSeq, this.maxBlocksPerSeq);
    b.writeI32(this.srcIndex, fb.prevSampledRows ?? this.noPlaceholders.subarray(0, fb.numTokens));
  }

  /** tokenIds[t] = sampledIds[srcIndex[t]] for the placeholder tokens of the step's first `numTokens`. */
  private gatherPlaceholders(numTokens: number): void {
    if (this.comm && this.config.broadcastSampledIds) this.comm.broadcast(this.sampledIds, this.sampledIdsLength, 0);
    this.backend.gatherTokenIds(this.inputs.tokenIds, this.sampledIds, this.srcIndex, numTokens);
  }

  /**
   * Captures now the decode graph of every batch bucket at the first context bucket (sequences up to 512
   * tokens), so the first decode steps of each batch size replay instead of stalling on a capture, as vLLM
   * and TensorRT-LLM capture at start-up; longer contexts are still captured on first use. The inputs are
   * padding rows only (the scratch KV block). One rank only: tensor-parallel ranks capture their
   * collectives together, on first use. Returns how many graphs it captured.
   */
  async captureDecodeGraphs(): Promise<number> {
    return this.graphs && !this.comm ? this.graphs.captureAll() : 0;
  }

  private async forwardEager(fb: ForwardBatch): Promise<Tensor> {
    const b = this.backend;
    const inp = this.inputs;
    this.writeInputs(fb);
    let maxSeqlenQ = 0, maxSeqlenK = 0;
    for (let s = 0; s < fb.numSeqs; s++) {
      maxSeqlenQ = Math.max(maxSeqlenQ, fb.cuSeqlensQ[s + 1]! - fb.cuSeqlensQ[s]!);
      maxSeqlenK = Math.max(maxSeqlenK, fb.contextLens[s]!);
    }
    const meta = { ...inp.meta, numSeqs: fb.numSeqs, numTokens: fb.numTokens, maxSeqlenQ, maxSeqlenK, isDecode: maxSeqlenQ === 1, numDecodeSeqs: leadingDecodeSeqs(fb.cuSeqlensQ, fb.numSeqs) };
    const numLogits = fb.logitsIndices.length;
    if (fb.prevSampledRows) this.gatherPlaceholders(fb.numTokens);
    const logits = this.model.forward({ ...inp, meta }, this.kvCache.layers, numLogits);
    return b.view(logits, [numLogits, this.spec.vocabSize]);
  }

  /** Forward + sampling: one result per entry, null where the entry is a prefill chunk that does not sample. */
  async execute(batch: { readonly entries: readonly RunnerEntry[] }): Promise<ExecuteResults> {
    const entries = batch.entries;
    if (entries.length === 0) return [];
    const samples = samplingEntries(entries);
    const fb = withPromptLogprobRows(buildForwardBatch(entries, this.config.blockSize, this.maxBlocksPerSeq, samples), entries);
    this.checkPlaceholders(fb);
    const mark = this.timer.begin(stepKindOf(fb));
    const out = await this.executeForward(fb, entries, samples);
    this.timer.end(mark);
    this.lastLaunchRows = null;
    return out;
  }

  /**
   * Whether `launch` can run this batch: no prompt logprobs, and every sampling row one the device
   * sampler takes where there is one (penalties and min_tokens included: a row's token still in
   * flight is read on the device, or from the previous launch's host samples).
   */
  canLaunch(batch: { readonly entries: readonly RunnerEntry[] }): boolean {
    if (this.comm && !this.config.broadcastSampledIds) return false;
    const sampler = this.deviceSampler();
    return batch.entries.every((e) => {
      const { samplingState: state, numCachedTokens, tokenIds } = e.seq;
      if (numPromptLogprobRows(state, numCachedTokens, e.numNewTokens) > 0) return false;
      if (numCachedTokens + e.numNewTokens < tokenIds.length) return true;
      return !sampler || sampler.canSample(state);
    });
  }

  /**
   * Async scheduling: queues the step (inputs, forward, sampling, the copy of the sampled ids to
   * pinned host memory) and resolves before the device has run it. Token ids < 0 in the entries
   * are placeholders for the previous launch's samples (engine/executor.ts). On a backend
   * without pinned memory (the CPU) the step runs here and `collect` has nothing to wait for.
   * @throws PeregrineError PGN_ERR_INTERNAL with two launches uncollected, or a placeholder that
   *   names no sample of the previous launch
   */
  async launch(batch: { readonly entries: readonly RunnerEntry[] }): Promise<LaunchedStep> {
    const samples = samplingEntries(batch.entries);
    return this.launchForward(buildForwardBatch(batch.entries, this.config.blockSize, this.maxBlocksPerSeq, samples), batch.entries, samples);
  }

  /**
   * `launch` over a batch already flattened (rank 0 of a tensor-parallel group sends `fb` to the
   * other ranks first; they run it with forwardStep, taking placeholder ids from the broadcast).
   */
  async launchForward(fb: ForwardBatch, entries: readonly RunnerEntry[], samples: readonly boolean[]): Promise<LaunchedStep> {
    if (this.numUncollected >= 2) throw new PeregrineError('PGN_ERR_INTERNAL', 'launch: two launched steps are not collected yet');
    this.checkPlaceholders(fb);
    // a row whose input token is a placeholder has one output token in flight, not in its state yet:
    // pendingAt is that token's place in this step's input ids
    const rows = entries.filter((_, i) => samples[i]).map((e, k) => {
      const t = fb.logitsIndices[k]!;
      return { logitsRow: k, state: e.seq.samplingState, ...((fb.prevSampledRows?.[t] ?? -1) >= 0 && { pendingAt: t }) };
    });
    const sampler = this.deviceSampler();
    const mark = this.timer.begin(stepKindOf(fb));
    // no wait here with a communicator either: collect() waits (with the step deadline)
    const logits = entries.length > 0 ? await this.forwardToDevice(fb, false) : null;
    const read = await this.launchedSampling.sample(sampler, logits, rows, fb.prevSampledRows, this.inputs.tokenIds);
    this.timer.end(mark);
    this.lastLaunchRows = rows.length;
    this.numUncollected++;
    return {
      collect: async () => {
        if (this.comm) await this.waitBounded(() => this.timer.isDone(mark));
        else await this.timer.wait(mark);
        this.numUncollected--;
        const sampled = read();
        let k = 0;
        return entries.map((_, i) => (samples[i] ? sampled[k++]! : null));
      },
    };
  }

  /** Placeholders may only name sampling rows of the launch just before this step. */
  private checkPlaceholders(fb: ForwardBatch): void {
    if (!fb.prevSampledRows) return;
    const limit = this.lastLaunchRows ?? 0;
    const bad = fb.prevSampledRows.findIndex((r) => r >= limit);
    if (bad >= 0) {
      throw new PeregrineError('PGN_ERR_INTERNAL', `token ${bad} of the step is a placeholder for sample row ${fb.prevSampledRows[bad]}, but the previous step ${this.lastLaunchRows === null ? 'was not launched' : `sampled ${limit} rows`}`, { token: bad });
    }
  }

  /**
   * Where the device's time went since the last reset (step-timing.ts): `hostGapMs` is the time
   * it had no queued work between steps (the engine's postprocess and scheduling, flattening
   * the batch, not hidden behind a queued step); the rest is busy. Issue 4's overlap target:
   * hostGapFraction < 5% at batch 256.
   */
  stepTiming(reset = false): StepTiming {
    return this.timer.summary(reset);
  }

  /** Step counts and device busy / idle time since the runner was made, without waiting for the device. */
  stepTotals(): StepTotals {
    return this.timer.lifetimeTotals();
  }

  /**
   * `execute` over a batch already flattened (rank 0 of a tensor-parallel group sends `fb` to
   * the other ranks first). `samples[i]`: entry i samples, its logits row is the next of `fb`;
   * prompt-logprob rows (withPromptLogprobRows), if any, follow the sampling rows.
   */
  async executeForward(fb: ForwardBatch, entries: readonly RunnerEntry[], samples: readonly boolean[]): Promise<ExecuteResults> {
    const sampler = this.deviceSampler();
    const V = this.spec.vocabSize;
    const numSampleRows = samples.filter(Boolean).length;
    const numPromptRows = fb.logitsIndices.length - numSampleRows;
    let results: ExecuteResults;
    let promptLogits: Float32Array;
    if (sampler) {
      const logits = await this.forwardToDevice(fb);
      promptLogits = await downloadRowRange(sampler, logits, numSampleRows, numPromptRows, V, Math.min(this.config.maxNumSeqs, this.config.maxNumBatchedTokens));
      results = await sampleOnDevice(sampler, logits, entries, samples, V, this.scratch);
    } else {
      const logits = await this.forward(fb);
      promptLogits = logits.subarray(numSampleRows * V);
      let row = 0;
      results = entries.map((e, i) => {
        if (!samples[i]) return null;
        const r = row++;
        return sampleRow(logits.subarray(r * V, (r + 1) * V), e.seq.samplingState, this.scratch);
      });
    }
    if (numPromptRows > 0) results.promptLogprobs = promptLogprobs(promptLogits, entries, V);
    return results;
  }

  private deviceSampler(): DeviceSampler | null {
    if (this.sampler === undefined) this.sampler = createDeviceSampler(this.backend, Math.min(this.config.maxNumSeqs, this.config.maxNumBatchedTokens), this.spec.vocabSize);
    return this.sampler;
  }

  /** number of decode graphs captured so far */
  get numCapturedGraphs(): number {
    return this.graphs?.size ?? 0;
  }

  dispose(): void {
    this.done?.destroy();
    this.timer.dispose();
    this.launchedSampling.dispose();
    this.sampler?.dispose();
    this.sampler = undefined;
    this.graphs?.dispose();
    this.model.dispose();
    this.kvCache.dispose();
    for (const t of this.inputTensors) this.backend.free(t);
    for (const t of allTensors(this.weights)) this.backend.free(t);
  }
}

/** Which entries sample: those whose range reaches the end of their sequence. */
export function samplingEntries(entries: readonly RunnerEntry[]): boolean[] {
  return entries.map((e) => e.seq.numCachedTokens + e.numNewTokens === e.seq.tokenIds.length);
}
