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
import type { Backend } from '../backends/backend.js';
import type { DeviceName } from '../backends/index.js';
import { LLMEngine } from '../engine/llm-engine.js';
import { PeregrineError } from '../errors.js';
import type { HfConfig } from '../models/config.js';
import { TpGroup } from '../parallel/tp-group.js';
import type { RandomQuantization } from '../bench/random-weights.js';
import { ModelRunner } from '../runner/model-runner.js';
import { makeSamplingParams, type SampleResult, type SamplingParams, type SamplingParamsInit } from '../sampling/index.js';
import { applyChatTemplate, type ChatMessage } from '../tokenizer/chat-template.js';
import { AsyncQueue } from './async-queue.js';
import { hostRanks, loadCheckpoint, loadRandom, type LoadedLLM } from './llm-loader.js';
import type { CompletionOutput, OutputLogprob, RequestOutput, StreamDelta } from './outputs.js';
import type { LLMOptions } from './llm-options.js';

export type { LLMOptions } from './llm-options.js';

/** A prompt: text (needs a tokenizer) or token ids. */
export type Prompt = string | readonly number[];

/** What an LLM is made of (llm-loader.ts): spec, tokenizer, executor, engine, generation defaults, KV dtype. */
export interface LLM extends LoadedLLM {}

export class LLM {
  private readonly listeners = new Map<string, { onOutput: (o: EngineStepOutput) => void; onError: (e: PeregrineError) => void }>();
  private pumping = false;
  private closed = false;

  private constructor(parts: LoadedLLM) {
    Object.assign(this, parts);
  }

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
    return new LLM(await loadCheckpoint(dir, options));
  }

  /**
   * A model of a real shape with random weights and no tokenizer, for benchmarks.
   * @param config an HF config.json object (see src/bench/shapes.ts)
   * @param options.tp > 1: every rank makes its own shard (the same model tp 1 makes from `seed`)
   * @param quantization 'fp8': the layers' linears in E4M3 with per-tensor scales
   */
  static async random(config: HfConfig, options: LLMOptions = {}, seed = 0, quantization: RandomQuantization = null): Promise<LLM> {
    return new LLM(await loadRandom(config, options, seed, quantization));
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
    return hostRanks(dir, options, log);
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

type EngineStepOutput = Awaited<ReturnType<LLMEngine['step']>>[number];

function isPromptList(p: Prompt | readonly Prompt[]): p is readonly Prompt[] {
  return Array.isArray(p) && (p.length === 0 || typeof p[0] !== 'number');
}
