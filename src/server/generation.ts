/**
 * One HTTP request's generation: one engine request per prompt, their deltas merged into one
 * stream tagged with the OpenAI choice index (promptIndex * n + completion index), metrics
 * recorded on the way. Aborting (client gone) aborts every engine request it made.
 */
import { AsyncQueue } from '../api/async-queue.js';
import type { OutputLogprob, StreamDelta } from '../api/outputs.js';
import type { SamplingParamsInit } from '../sampling/params.js';
import type { EngineClient } from './engine-client.js';
import { toApiError } from './errors.js';
import type { ServerMetrics } from './metrics.js';

export interface ChoiceDelta {
  readonly choiceIndex: number;
  readonly promptIndex: number;
  readonly delta: StreamDelta;
}

/** Everything one choice produced, for non-streamed answers. */
export interface ChoiceResult {
  text: string;
  tokenIds: number[];
  logprobs: OutputLogprob[] | null;
  /** per prompt token (null for the first), when the request asked for prompt logprobs */
  promptLogprobs: ReadonlyArray<OutputLogprob | null> | null;
  finishReason: string | null;
  stopReason: string | number | null;
}

export class Generation {
  readonly deltas = new AsyncQueue<ChoiceDelta>();
  private readonly engineIds: string[];
  private numOpen: number;
  private finished = false;
  private aborted = false;

  private constructor(
    private readonly engine: EngineClient,
    private readonly metrics: ServerMetrics,
    readonly numPromptTokens: number,
    readonly n: number,
    streams: AsyncQueue<StreamDelta>[],
    engineIds: string[],
    arrivalMs: number,
  ) {
    this.engineIds = engineIds;
    this.numOpen = streams.length;
    streams.forEach((s, i) => void this.pump(s, i, arrivalMs));
  }

  /**
   * Submits every prompt to the engine. If one is refused, those already admitted are aborted.
   * @throws ApiError the first refusal (503 queue full, 400 prompt too long, ...)
   */
  static async start(
    engine: EngineClient,
    metrics: ServerMetrics,
    job: { requestId: string; prompts: number[][]; params: SamplingParamsInit; n: number; arrivalMs: number },
  ): Promise<Generation> {
    const ids = job.prompts.map((_, i) => (job.prompts.length === 1 ? job.requestId : `${job.requestId}-p${i}`));
    const settled = await Promise.allSettled(
      job.prompts.map((promptTokenIds, i) => engine.submit({ requestId: ids[i]!, promptTokenIds, params: job.params })),
    );
    const failed = settled.find((s) => s.status === 'rejected');
    if (failed) {
      ids.forEach((id) => engine.abort(id));
      throw toApiError((failed as PromiseRejectedResult).reason);
    }
    const streams = settled.map((s) => (s as PromiseFulfilledResult<AsyncQueue<StreamDelta>>).value);
    const numPromptTokens = job.prompts.reduce((a, p) => a + p.length, 0);
    metrics.onAdmitted(numPromptTokens);
    return new Generation(engine, metrics, numPromptTokens, job.n, streams, ids, job.arrivalMs);
  }

  /** Stops every engine request of this generation (the client left); the delta stream ends. */
  abort(): void {
    if (this.finished) return;
    this.finished = this.aborted = true;
    this.engineIds.forEach((id) => this.engine.abort(id));
    this.deltas.close();
  }

  /** Drains the stream into one result per choice (non-streamed answers). */
  async collect(numPrompts: number): Promise<ChoiceResult[]> {
    const results: ChoiceResult[] = Array.from({ length: numPrompts * this.n }, () => ({
      text: '', tokenIds: [], logprobs: null, promptLogprobs: null, finishReason: null, stopReason: null,
    }));
    for await (const { choiceIndex, delta } of this.deltas) {
      const r = results[choiceIndex]!;
      r.text += delta.text;
      r.tokenIds.push(...delta.tokenIds);
      if (delta.logprobs) (r.logprobs ??= []).push(...delta.logprobs);
      r.promptLogprobs ??= delta.promptLogprobs ?? null;
      if (delta.finished) {
        r.finishReason = delta.finishReason;
        r.stopReason = delta.stopReason;
      }
    }
    return results;
  }

  private async pump(stream: AsyncQueue<StreamDelta>, promptIndex: number, arrivalMs: number): Promise<void> {
    let firstTokenMs: number | null = null;
    let numOutputTokens = 0;
    try {
      for await (const delta of stream) {
        if (delta.tokenIds.length > 0) {
          firstTokenMs ??= performance.now();
          numOutputTokens += delta.tokenIds.length;
          this.metrics.onTokens(delta.tokenIds.length);
        }
        if (delta.finished && delta.finishReason) this.metrics.onCompletionFinished(delta.finishReason);
        this.deltas.push({ choiceIndex: promptIndex * this.n + delta.index, promptIndex, delta });
      }
      if (this.aborted) return;
      const nowMs = performance.now();
      this.metrics.onRequestDone({
        firstTokenS: firstTokenMs === null ? null : (firstTokenMs - arrivalMs) / 1000,
        e2eS: (nowMs - arrivalMs) / 1000,
        numOutputTokens: Math.ceil(numOutputTokens / this.n),
      });
      if (--this.numOpen === 0) {
        this.finished = true;
        this.deltas.close();
      }
    } catch (e) {
      if (this.aborted) return;
      this.metrics.onError(toApiError(e).code);
      this.engineIds.forEach((id) => this.engine.abort(id));
      this.finished = true;
      this.deltas.fail(toApiError(e));
    }
  }
}
