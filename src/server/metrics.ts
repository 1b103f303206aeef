/**
 * Prometheus metrics of the server (prom-client, one registry per app): engine gauges read from
 * the engine's counters at scrape time, latency histograms and token counters recorded by the
 * HTTP side as requests stream. Names follow vLLM's with a `peregrine_` prefix.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { EngineStats } from './engine-protocol.js';

const TTFT_BUCKETS_S = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
const TPOT_BUCKETS_S = [0.001, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5];
const E2E_BUCKETS_S = [0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480];

/** A counter following a running total the engine keeps: each scrape adds what the total grew by (in `divisor`s). */
class TotalCounter {
  #seen = 0;
  constructor(private readonly counter: Counter, private readonly divisor = 1) {}

  follow(total: number): void {
    if (total > this.#seen) this.counter.inc((total - this.#seen) / this.divisor);
    this.#seen = total;
  }
}

export class ServerMetrics {
  readonly registry = new Registry();
  private readonly running: Gauge;
  private readonly waiting: Gauge;
  private readonly kvUsage: Gauge;
  private readonly kvBlocks: Gauge<'state'>;
  private readonly prefixHitRate: Gauge;
  private readonly preemptions: TotalCounter;
  private readonly healthy: Gauge;
  private readonly steps: TotalCounter;
  private readonly stepBusy: TotalCounter;
  private readonly stepIdle: TotalCounter;
  private readonly ttft: Histogram;
  private readonly tpot: Histogram;
  private readonly e2e: Histogram;
  private readonly promptTokens: Counter;
  private readonly generationTokens: Counter;
  private readonly requestSuccess: Counter<'finished_reason'>;
  private readonly requestErrors: Counter<'code'>;

  constructor(modelName: string, opts: { processMetrics?: boolean } = {}) {
    const r = this.registry;
    r.setDefaultLabels({ model_name: modelName });
    if (opts.processMetrics ?? true) collectDefaultMetrics({ register: r });
    const gauge = (name: string, help: string) => new Gauge({ name, help, registers: [r] });
    const counter = (name: string, help: string) => new Counter({ name, help, registers: [r] });
    const histogram = (name: string, help: string, buckets: number[]) => new Histogram({ name, help, buckets, registers: [r] });
    this.running = gauge('peregrine_num_requests_running', 'Sequences in the engine\'s running batch.');
    this.waiting = gauge('peregrine_num_requests_waiting', 'Sequences waiting for admission.');
    this.kvUsage = gauge('peregrine_kv_cache_usage_perc', 'Fraction of KV blocks held by live sequences (1 = full).');
    this.kvBlocks = new Gauge({ name: 'peregrine_kv_cache_blocks', help: 'KV blocks by state: used (held by sequences), cached (reusable prefix), free.', labelNames: ['state'], registers: [r] });
    this.prefixHitRate = gauge('peregrine_prefix_cache_hit_rate', 'Prompt tokens served from the prefix cache / prompt tokens looked up, since start.');
    this.preemptions = new TotalCounter(counter('peregrine_num_preemptions_total', 'Sequences preempted (blocks freed, recomputed later).'));
    this.healthy = gauge('peregrine_engine_healthy', '1 while the engine worker runs, 0 once it died.');
    this.steps = new TotalCounter(counter('peregrine_engine_steps_total', 'Engine steps the device has finished (single-device engines).'));
    this.stepBusy = new TotalCounter(counter('peregrine_engine_step_busy_seconds_total', 'Device time spent running engine steps.'), 1000);
    this.stepIdle = new TotalCounter(counter('peregrine_engine_step_idle_seconds_total', 'Device idle time between engine steps that the host did not hide (gaps up to 50 ms; longer ones are an idle engine).'), 1000);
    this.ttft = histogram('peregrine_time_to_first_token_seconds', 'Arrival to first generated token.', TTFT_BUCKETS_S);
    this.tpot = histogram('peregrine_time_per_output_token_seconds', 'Mean time between output tokens after the first, per request.', TPOT_BUCKETS_S);
    this.e2e = histogram('peregrine_e2e_request_latency_seconds', 'Arrival to last token.', E2E_BUCKETS_S);
    this.promptTokens = counter('peregrine_prompt_tokens_total', 'Prompt tokens admitted.');
    this.generationTokens = counter('peregrine_generation_tokens_total', 'Tokens generated.');
    this.requestSuccess = new Counter({ name: 'peregrine_request_success_total', help: 'Finished completions by finish reason.', labelNames: ['finished_reason'], registers: [r] });
    this.requestErrors = new Counter({ name: 'peregrine_request_errors_total', help: 'Requests answered with an error, by error code.', labelNames: ['code'], registers: [r] });
    this.healthy.set(1);
  }

  /** Copies the engine's counters into the gauges (called before each scrape). */
  setEngineStats(s: EngineStats | null): void {
    this.healthy.set(s ? 1 : 0);
    if (!s) return;
    this.running.set(s.numRunning);
    this.waiting.set(s.numWaiting);
    this.kvUsage.set(s.numBlocks > 0 ? s.numUsedBlocks / s.numBlocks : 0);
    this.kvBlocks.set({ state: 'used' }, s.numUsedBlocks);
    this.kvBlocks.set({ state: 'cached' }, s.numCachedBlocks);
    this.kvBlocks.set({ state: 'free' }, s.numFreeBlocks);
    this.prefixHitRate.set(s.prefixCacheHitRate);
    this.preemptions.follow(s.numPreemptions);
    if (s.steps) {
      this.steps.follow(s.steps.numSteps);
      this.stepBusy.follow(s.steps.busyMs);
      this.stepIdle.follow(s.steps.idleMs);
    }
  }

  onAdmitted(numPromptTokens: number): void {
    this.promptTokens.inc(numPromptTokens);
  }

  onTokens(numTokens: number): void {
    if (numTokens > 0) this.generationTokens.inc(numTokens);
  }

  /**
   * One engine request (one prompt, all its `n` completions) ended.
   * @param firstTokenS seconds from arrival to its first token (null if none came)
   */
  onRequestDone(r: { firstTokenS: number | null; e2eS: number; numOutputTokens: number }): void {
    if (r.firstTokenS === null) return;
    this.ttft.observe(r.firstTokenS);
    this.e2e.observe(r.e2eS);
    if (r.numOutputTokens > 1) this.tpot.observe((r.e2eS - r.firstTokenS) / (r.numOutputTokens - 1));
  }

  onCompletionFinished(reason: string): void {
    this.requestSuccess.inc({ finished_reason: reason });
  }

  onError(code: string): void {
    this.requestErrors.inc({ code });
  }

  async render(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
