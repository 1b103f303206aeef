/**
 * The library API.
 *
 * @example
 * const llm = await LLM.load('models/demo');
 * const [out] = await llm.generate('Once upon a time', { maxTokens: 32, temperature: 0 });
 * console.log(out.outputs[0].text);
 * for await (const d of llm.stream('Hello', { maxTokens: 16 })) process.stdout.write(d.text);
 * await llm.close();
 *
 * // tensor parallel: the heads split over 2 ranks (CPU: worker threads; CUDA: one process per GPU)
 * const big = await LLM.load('models/llama', { device: 'cuda', tp: 2 });
 */
import { randomUUID } from 'node:crypto';
import type { Backend, KvCacheDType } from '../backends/backend.js';
import { createBackend, type DeviceName } from '../backends/index.js';
import { LLMEngine } from '../engine/llm-engine.js';
import { PeregrineError } from '../errors.js';
import { loadGenerationConfig } from '../models/generation-config.js';
import { loadModel } from '../models/load-model.js';
import { loadModelConfig, parseModelConfig, type HfConfig } from '../models/config.js';
import type { ModelWeights } from '../models/model-weights.js';
import type { ModelSpec } from '../models/spec.js';
import { TpGroup } from '../parallel/tp-group.js';
import type { RandomQuantization } from '../bench/random-weights.js';
import { parseQuantization, quantizedCheckpointDir } from '../weights/quant/quantize-on-load.js';
import { parseKvCacheDtype } from '../runner/kv-cache.js';
import { ModelRunner } from '../runner/model-runner.js';
import { makeSamplingParams, type SampleResult, type SamplingParams, type SamplingParamsInit } from '../sampling/index.js';
import { applyChatTemplate, type ChatMessage } from '../tokenizer/chat-template.js';
import { Tokenizer } from '../tokenizer/tokenizer.js';
import { AsyncQueue } from './async-queue.js';
import type { CompletionOutput, OutputLogprob, RequestOutput, StreamDelta } from './outputs.js';
import { asyncSchedulingOf, asyncTensorParallelOf, defaultNumKvBlocks, kvCacheOptions, limits, multiNodeOf, type Limits, type LLMOptions } from './llm-options.js';

export type { LLMOptions } from './llm-options.js';

/** A prompt: text (needs a tokenizer) or token ids. */
export type Prompt = string | readonly number[];

/** Model config, generation defaults and tokenizer: what LLM.load reads besides the weights. */
async function loadModelExtras(dir: string, modelSpec: ModelSpec): Promise<{ spec: ModelSpec; tokenizer: Tokenizer | null; defaults: Partial<SamplingParamsInit> }> {
  const gen = loadGenerationConfig(dir);
  const tokenizer = Tokenizer.exists(dir) ? await Tokenizer.load(dir) : null;
  const eos = new Set<number>([...modelSpec.eosTokenIds, ...(gen?.eosTokenIds ?? [])]);
  if (tokenizer?.eosTokenId != null) eos.add(tokenizer.eosTokenId);
  const defaults: Partial<SamplingParamsInit> = {};
  if (gen?.temperature !== undefined) defaults.temperature = gen.temperature;
  if (gen?.topP !== undefined) defaults.topP = gen.topP;
  if (gen?.topK !== undefined) defaults.topK = gen.topK;
  if (gen?.repetitionPenalty !== undefined) defaults.repetitionPenalty = gen.repetitionPenalty;
  return { spec: { ...modelSpec, eosTokenIds: [...eos] }, tokenizer, defaults };
}


export class LLM {
  private readonly listeners = new Map<string, { onOutput: (o: EngineStepOutput) => void; onError: (e: PeregrineError) => void }>();
  private pumping = false;
  private closed = false;

  private constructor(
    readonly spec: ModelSpec,
    readonly tokenizer: Tokenizer | null,
    /** what runs the model: the one-device runner, or the tensor-parallel group (tp > 1) */
    readonly executor: ModelRunner | TpGroup,
    readonly engine: LLMEngine,
    readonly defaults: Partial<SamplingParamsInit>,
    /** what the paged KV cache stores: 'auto' (the activation dtype) or 'fp8' (E4M3) */
    readonly kvCacheDtype: KvCacheDType,
  ) {}

  /** tensor-parallel ranks */
  get tp(): number {
    return this.executor instanceof TpGroup ? this.executor.tp : 1;
  }

  /** the backend's device (rank 0's with tp > 1) */
  get device(): DeviceName {
    return this.executor.backend.device as DeviceName;
  }

  /**
   * The one-device runner (benchmarks and perplexity drive it directly).
   * @throws PeregrineError PGN_ERR_UNSUPPORTED_FEATURE with tp > 1: the ranks' runners live in the TpGroup (`executor`)
   */
  get runner(): ModelRunner {
    if (this.executor instanceof TpGroup) throw this.notOneDevice('runner');
    return this.executor;
  }

  /**
   * The one-device backend.
   * @throws PeregrineError PGN_ERR_UNSUPPORTED_FEATURE with tp > 1
   */
  get backend(): Backend {
    if (this.executor instanceof TpGroup) throw this.notOneDevice('backend');
    return this.executor.backend;
  }

  private notOneDevice(what: string): PeregrineError {
    return new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', `llm.${what} is the one-device path; this model runs tensor parallel over ${this.tp} ranks (use llm.executor, or load it with tp 1)`, { tp: this.tp });
  }

  /**
   * Loads a Hugging Face checkpoint folder (config.json + safetensors, tokenizer optional).
   * @param options.tp tensor-parallel ranks (default 1)
   * @throws PeregrineError PGN_ERR_INVALID_ARGUMENT when tp does not split the model, maxModelLen
   *   is too long or kvCacheDtype is unknown, the loader's errors (bad checkpoint, missing device), PGN_ERR_OUT_OF_MEMORY
   *   when the KV cache cannot hold one sequence of maxModelLen
   */
  static async load(dir: string, options: LLMOptions = {}): Promise<LLM> {
    parseKvCacheDtype(options.kvCacheDtype); // a bad value fails before the model loads
    checkNodeZero(options);
    dir = await LLM.checkpointToLoad(dir, options);
    const tp = options.tp ?? 1;
    if (tp !== 1) return LLM.loadTensorParallel(dir, tp, options);
    const backend = await createBackend(options.device ?? 'cpu', { deviceId: options.deviceId });
    try {
      const loaded = loadModel(dir, backend, options.onLoadProgress);
      const { spec, tokenizer, defaults } = await loadModelExtras(dir, loaded.spec);
      return LLM.assemble(backend, spec, loaded.weights, tokenizer, defaults, options, dir);
    } catch (e) {
      backend.dispose();
      throw e;
    }
  }

  /** Starts the tensor-parallel group (rank 0 here) and the engine over it. */
  private static async loadTensorParallel(dir: string, tp: number, options: LLMOptions): Promise<LLM> {
    const { spec, tokenizer, defaults } = await loadModelExtras(dir, loadModelConfig(dir).spec);
    return LLM.startTensorParallel({ modelDir: dir }, spec, tokenizer, defaults, dir, tp, options);
  }


  /**
   * A model of a real shape with random weights and no tokenizer, for benchmarks.
   * @param config an HF config.json object (see src/bench/shapes.ts)
   * @param options.tp > 1: every rank makes its own shard (the same model tp 1 makes from `seed`)
   * @param quantization 'fp8': the layers' linears in E4M3 with per-tensor scales
   */
  static async random(config: HfConfig, options: LLMOptions = {}, seed = 0, quantization: RandomQuantization = null): Promise<LLM> {
    checkNodeZero(options);
    if ((options.tp ?? 1) !== 1) return LLM.randomTensorParallel(config, options, seed, quantization);
    parseKvCacheDtype(options.kvCacheDtype);
    const backend = await createBackend(options.device ?? 'cpu', { deviceId: options.deviceId });
    try {
      const spec = parseModelConfig(config);
      const { randomModelWeights } = await import('../bench/random-weights.js');
      return LLM.assemble(backend, spec, randomModelWeights(spec, backend, { seed, quantization }), null, {}, options, null);
    } catch (e) {
      backend.dispose();
      throw e;
    }
  }

  /** Random weights over a tensor-parallel group: every rank makes its own shard, no checkpoint (benchmarks). */
  private static async randomTensorParallel(config: HfConfig, options: LLMOptions, seed: number, quantization: RandomQuantization): Promise<LLM> {
    return LLM.startTensorParallel({ randomModel: { config, seed, quantization } }, parseModelConfig(config), null, {}, null, options.tp ?? 1, options);
  }

  /** Ranks 1..tp-1 started (here, or on other nodes) and rank 0 in this process, over a checkpoint or random weights. */
  private static async startTensorParallel(
    source: { modelDir: string } | { randomModel: { config: HfConfig; seed: number; quantization: RandomQuantization } },
    spec: ModelSpec, tokenizer: Tokenizer | null, defaults: Partial<SamplingParamsInit>, dir: string | null, tp: number, options: LLMOptions,
  ): Promise<LLM> {
    const lim = limits(spec, options);
    const kvCache = kvCacheOptions(options, dir, spec.numLayers);
    const group = await TpGroup.start({
      ...source,
      tp,
      device: options.device ?? 'cpu',
      deviceIds: options.deviceIds,
      nodes: multiNodeOf(options),
      eosTokenIds: spec.eosTokenIds,
      onLoadProgress: options.onLoadProgress,
      runner: {
        ...lim, kvCache, broadcastSampledIds: asyncTensorParallelOf(options),
        numBlocks: options.numKvBlocks ?? ((backend, rankSpec) => defaultNumKvBlocks(backend, rankSpec, lim, options, tp)),
      },
    });
    return new LLM(spec, tokenizer, group, LLM.makeEngine(group, tokenizer, lim, options), defaults, kvCache.dtype ?? 'auto');
  }


  /**
   * Multi-node, on node K > 0 (options.nodeRank): hosts this node's tp / nnodes ranks for node 0's
   * LLM (same tp, nnodes, masterAddr, masterPort) and resolves once node 0 has closed it.
   * @param dir this node's copy of the checkpoint (null: node 0's path as sent, or its random weights)
   * @throws PeregrineError PGN_ERR_INVALID_ARGUMENT for a bad layout or when node 0 refuses this
   *   node, PGN_ERR_ENGINE_DEAD when node 0 does not answer within nodeTimeoutMs or goes away mid-run
   * @example
   * await LLM.hostRanks('/models/llama-70b', { device: 'cuda', tp: 16, nnodes: 2, nodeRank: 1, masterAddr: '10.0.0.1' });
   */
  static async hostRanks(dir: string | null, options: LLMOptions, log?: (line: string) => void): Promise<void> {
    const nodes = multiNodeOf(options);
    if (!nodes || nodes.nodeRank === 0) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', 'LLM.hostRanks is for nodes 1 .. nnodes-1 (nodeRank > 0); node 0 calls LLM.load', { param: 'node_rank' });
    const { runNodeHost } = await import('../parallel/node-host.js');
    const modelDir = dir === null ? undefined : await LLM.checkpointToLoad(dir, options);
    await runNodeHost({ nodes, tp: options.tp ?? 1, modelDir, deviceIds: options.deviceIds, log });
  }

  /** `dir`, or with options.quantization its quantized build (cached; made on first use). */
  private static async checkpointToLoad(dir: string, options: LLMOptions): Promise<string> {
    if (options.quantization === undefined) return dir;
    const kind = parseQuantization(options.quantization);
    return quantizedCheckpointDir(dir, { kind }, { cacheDir: options.quantizationCacheDir, onProgress: options.onQuantizeProgress });
  }

  /** @param dir the checkpoint (fp8 KV scales are read from it); null for random weights */
  private static assemble(backend: Backend, spec: ModelSpec, weights: ModelWeights, tokenizer: Tokenizer | null, defaults: Partial<SamplingParamsInit>, options: LLMOptions, dir: string | null): LLM {
    const lim = limits(spec, options);
    const kvCache = kvCacheOptions(options, dir, spec.numLayers);
    const numKvBlocks = options.numKvBlocks ?? defaultNumKvBlocks(backend, spec, lim, options);
    const runner = new ModelRunner(backend, spec, weights, { ...lim, numBlocks: numKvBlocks, kvCache });
    return new LLM(spec, tokenizer, runner, LLM.makeEngine(runner, tokenizer, lim, options), defaults, runner.kvCache.dtype);
  }

  private static makeEngine(executor: ModelRunner | TpGroup, tokenizer: Tokenizer | null, lim: Limits, options: LLMOptions): LLMEngine {
    return new LLMEngine(executor, {
      tokenizer,
      maxNumSeqs: lim.maxNumSeqs,
      maxNumBatchedTokens: lim.maxNumBatchedTokens,
      enablePrefixCaching: options.enablePrefixCaching ?? true,
      maxWaiting: options.maxWaiting,
      asyncScheduling: asyncSchedulingOf(options, executor.backend.device),
    });
  }

  /** Sampling parameters with the model's generation_config defaults under the caller's. */
  samplingParams(init: SamplingParamsInit = {}): SamplingParams {
    return makeSamplingParams({ ...this.defaults, ...init });
  }

  /** Token ids of a prompt (text is tokenized with the model's special tokens, e.g. BOS). */
  encodePrompt(prompt: Prompt): number[] {
    if (typeof prompt !== 'string') {
      const ids = [...prompt];
      for (const id of ids) {
        if (!Number.isInteger(id) || id < 0 || id >= this.spec.vocabSize) {
          throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `token id ${id} is outside the vocabulary [0, ${this.spec.vocabSize})`, { param: 'prompt' });
        }
      }
      if (ids.length === 0) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', 'the prompt is empty', { param: 'prompt' });
      return ids;
    }
    if (!this.tokenizer) throw new PeregrineError('PGN_ERR_TOKENIZER_MISSING', 'this model has no tokenizer: pass the prompt as token ids');
    const ids = this.tokenizer.encode(prompt);
    if (ids.length === 0) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', 'the prompt is empty', { param: 'prompt' });
    return ids;
  }

  /** Generates for one or many prompts at once (all go through the batching engine together). */
  async generate(prompts: Prompt | readonly Prompt[], params: SamplingParamsInit = {}): Promise<RequestOutput[]> {
    const list: Prompt[] = isPromptList(prompts) ? [...prompts] : [prompts as Prompt];
    return Promise.all(list.map((p) => this.collect(p, params)));
  }

  /** Chat completion with the model's chat template. */
  async chat(messages: ChatMessage[], params: SamplingParamsInit = {}): Promise<RequestOutput> {
    if (!this.tokenizer) throw new PeregrineError('PGN_ERR_TOKENIZER_MISSING', 'this model has no tokenizer, so it has no chat template');
    const { tokenIds } = applyChatTemplate(this.tokenizer, messages, { addGenerationPrompt: true });
    return this.collect(tokenIds, params);
  }

  /** Streams the increments of every completion of one prompt. Breaking out of the loop aborts the request. */
  stream(prompt: Prompt, params: SamplingParamsInit = {}, requestId: string = randomUUID()): AsyncIterable<StreamDelta> {
    const sp = this.samplingParams(params);
    const promptTokenIds = this.encodePrompt(prompt);
    const childIds = Array.from({ length: sp.n }, (_, i) => `${requestId}-${i}`);
    const queue = new AsyncQueue<StreamDelta>(() => childIds.forEach((id) => this.abort(id)));
    let live = sp.n;
    childIds.forEach((childId, index) => {
      this.listeners.set(childId, { onError: (e) => queue.fail(e), onOutput: (o) => {
        if (o.finished) this.listeners.delete(childId);
        queue.push({
          requestId,
          index,
          text: o.newText,
          tokenIds: o.newTokenIds,
          logprobs: this.toLogprobs(o.newLogprobs),
          promptLogprobs: o.promptLogprobs && o.promptLogprobs.map((l) => l && this.toLogprobs([l])![0]!),
          finished: o.finished,
          finishReason: o.finishReason,
          stopReason: o.stopReason,
        });
        if (o.finished && --live === 0) queue.close();
      } });
    });
    try {
      childIds.forEach((childId, i) => {
        this.engine.addRequest({ requestId: childId, promptTokenIds, params: { ...sp, n: 1, seed: sp.seed === null ? null : sp.seed + i } });
      });
    } catch (e) {
      childIds.forEach((id) => { this.listeners.delete(id); this.engine.abortRequest(id); });
      throw e;
    }
    this.pump();
    return queue;
  }

  abort(requestId: string): void {
    this.engine.abortRequest(requestId);
  }

  private async collect(prompt: Prompt, params: SamplingParamsInit): Promise<RequestOutput> {
    const requestId = randomUUID();
    const promptTokenIds = this.encodePrompt(prompt);
    const sp = this.samplingParams(params);
    const outs: Array<{ text: string; tokenIds: number[]; logprobs: OutputLogprob[] | null; finishReason: CompletionOutput['finishReason']; stopReason: string | number | null }> =
      Array.from({ length: sp.n }, () => ({ text: '', tokenIds: [], logprobs: sp.logprobs === null ? null : [], finishReason: null, stopReason: null }));
    this.lastCached.set(requestId, 0);
    let promptLogprobs: RequestOutput['promptLogprobs'] = null;
    try {
      for await (const d of this.stream(promptTokenIds, params, requestId)) {
        const o = outs[d.index]!;
        o.text += d.text;
        o.tokenIds.push(...d.tokenIds);
        if (d.logprobs && o.logprobs) o.logprobs.push(...d.logprobs);
        promptLogprobs ??= d.promptLogprobs ?? null;
        if (d.finished) { o.finishReason = d.finishReason; o.stopReason = d.stopReason; }
      }
    } catch (e) {
      this.lastCached.delete(requestId);
      throw e;
    }
    const stats = this.lastCached.get(requestId) ?? 0;
    this.lastCached.delete(requestId);
    return {
      requestId,
      prompt: typeof prompt === 'string' ? prompt : null,
      promptTokenIds,
      numCachedTokens: stats,
      promptLogprobs,
      finished: true,
      outputs: outs.map((o, index) => ({
        index,
        text: o.text,
        tokenIds: o.tokenIds,
        finishReason: o.finishReason,
        stopReason: o.stopReason,
        logprobs: o.logprobs,
        cumulativeLogprob: o.logprobs ? o.logprobs.reduce((a, l) => a + l.logprob, 0) : null,
      })),
    };
  }

  private readonly lastCached = new Map<string, number>();

  private toLogprobs(l: ReadonlyArray<Pick<SampleResult, 'tokenId' | 'logprob' | 'topLogprobs'>> | null): OutputLogprob[] | null {
    if (!l) return null;
    const tokenText = (id: number) => (this.tokenizer ? this.tokenizer.decode([id], { skipSpecialTokens: false }) : null);
    return l.map((r) => ({
      tokenId: r.tokenId,
      token: tokenText(r.tokenId),
      logprob: r.logprob,
      topLogprobs: (r.topLogprobs ?? []).map((t) => ({ tokenId: t.tokenId, token: tokenText(t.tokenId), logprob: t.logprob })),
    }));
  }

  /** Drives the engine while any request is unfinished, yielding to the event loop between steps. */
  private pump(): void {
    if (this.pumping || this.closed) return;
    this.pumping = true;
    void (async () => {
      try {
        while (this.engine.hasUnfinishedRequests() && !this.closed) {
          const outs = await this.engine.step();
          for (const o of outs) {
            const parentId = o.requestId.replace(/-\d+$/, '');
            // only collect() reads it back: stream() callers (the server) would leave one entry per request
            if (o.finished && this.lastCached.has(parentId)) this.lastCached.set(parentId, o.numCachedPromptTokens);
            this.listeners.get(o.requestId)?.onOutput(o);
          }
          await new Promise((r) => setImmediate(r));
        }
      } catch (e) {
        const err = e instanceof PeregrineError ? e : new PeregrineError('PGN_ERR_ENGINE_DEAD', `engine step failed: ${(e as Error).message}`, {}, { cause: e });
        const failed = [...this.listeners.values()];
        this.listeners.clear();
        for (const l of failed) l.onError(err);
      } finally {
        this.pumping = false;
      }
    })();
  }

  /** Counters of the engine (running, waiting, KV blocks, prefix hit rate, preemptions). */
  stats(): ReturnType<LLMEngine['stats']> {
    return this.engine.stats();
  }

  /** Frees the model (with tp > 1: stops the other ranks). */
  async close(): Promise<void> {
    this.closed = true;
    const ex = this.executor;
    if (ex instanceof TpGroup) return ex.dispose();
    await ex.backend.synchronize();
    ex.dispose();
    ex.backend.dispose();
  }
}

/** LLM.load / LLM.random run node 0 only: other nodes host ranks (LLM.hostRanks). */
function checkNodeZero(options: LLMOptions): void {
  const nodes = multiNodeOf(options);
  if (nodes && nodes.nodeRank !== 0) {
    throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `node ${nodes.nodeRank} of ${nodes.nnodes} does not load the LLM: it hosts ranks for node 0 (LLM.hostRanks, or the same peregrine command)`, { param: 'node_rank' });
  }
}

type EngineStepOutput = Awaited<ReturnType<LLMEngine['step']>>[number];

function isPromptList(p: Prompt | readonly Prompt[]): p is readonly Prompt[] {
  return Array.isArray(p) && (p.length === 0 || typeof p[0] !== 'number');
}
