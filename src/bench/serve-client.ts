/**
 * Serving benchmark client (like vLLM's benchmark_serving): streamed /v1/completions
 * with random token-id prompts, Poisson arrivals at `rate` req/s (or all at once),
 * reporting TTFT, TPOT and ITL (mean, p50, p99), requests/s and output tok/s.
 */
import http from 'node:http';
import { formatTable, mean, percentile, randomPrompts } from './stats.js';

export interface ServeBenchOptions {
  readonly url: string;
  readonly model?: string;
  readonly apiKey?: string;
  readonly numPrompts: number;
  /** requests per second; Infinity = all at once */
  readonly rate: number;
  readonly isl: number;
  readonly osl: number;
  readonly vocabSize?: number;
  readonly seed?: number;
  readonly onProgress?: (done: number, total: number) => void;
}

interface RequestTiming { ok: boolean; error?: string; ttftMs: number; e2eMs: number; itlMs: number[]; outputTokens: number }

export interface ServeBenchResult {
  readonly completed: number;
  readonly failed: number;
  readonly durationS: number;
  readonly requestsPerS: number;
  readonly outputTokPerS: number;
  readonly ttftMs: Summary;
  readonly tpotMs: Summary;
  readonly itlMs: Summary;
  readonly errors: string[];
  /** the server's own engine counters over the run (/metrics), null where it does not export them */
  readonly engine: EngineWindow | null;
}

/** Engine steps during the run, from the difference of two /metrics scrapes. */
export interface EngineWindow {
  readonly numSteps: number;
  readonly meanStepMs: number;
  /** device idle between steps / (busy + idle), in % */
  readonly deviceIdlePct: number;
}

const STEP_COUNTERS = ['peregrine_engine_steps_total', 'peregrine_engine_step_busy_seconds_total', 'peregrine_engine_step_idle_seconds_total'] as const;

/** The engine step counters of the server's /metrics, or null when absent. */
async function scrapeSteps(o: ServeBenchOptions, headers: Record<string, string>): Promise<number[] | null> {
  try {
    const text = await (await fetch(new URL('/metrics', o.url), { headers })).text();
    const values = STEP_COUNTERS.map((name) => Number(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text)?.[1] ?? NaN));
    return values.every(Number.isFinite) ? values : null;
  } catch {
    return null;
  }
}

function engineWindow(before: number[] | null, after: number[] | null): EngineWindow | null {
  if (!before || !after) return null;
  const [steps, busyS, idleS] = after.map((v, i) => v - before[i]!) as [number, number, number];
  if (steps <= 0) return null;
  return { numSteps: steps, meanStepMs: (1000 * (busyS + idleS)) / steps, deviceIdlePct: (100 * idleS) / (busyS + idleS) };
}

interface Summary { mean: number; p50: number; p99: number }

const summarize = (xs: number[]): Summary => ({ mean: mean(xs), p50: percentile(xs, 50), p99: percentile(xs, 99) });

async function modelName(o: ServeBenchOptions, headers: Record<string, string>): Promise<string> {
  if (o.model) return o.model;
  const r = await fetch(new URL('/v1/models', o.url), { headers });
  const j = (await r.json()) as { data?: Array<{ id: string }> };
  const id = j.data?.[0]?.id;
  if (!id) throw new Error(`no model listed at ${o.url}/v1/models`);
  return id;
}

/**
 * Streamed requests go through node:http with one keep-alive agent (no socket limit), not fetch: its web
 * streams cost tens of microseconds a chunk, which at tens of thousands of chunks a second would make this
 * client, not the server, the bottleneck the benchmark measures.
 */
const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });

function oneRequest(o: ServeBenchOptions, model: string, prompt: number[], headers: Record<string, string>): Promise<RequestTiming> {
  const body = JSON.stringify({ model, prompt, max_tokens: o.osl, ignore_eos: true, temperature: 1, stream: true, stream_options: { include_usage: true } });
  const url = new URL('/v1/completions', o.url);
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', agent, headers: { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
      res.setEncoding('utf8');
      if (res.statusCode !== 200) {
        let text = '';
        res.on('data', (d: string) => (text += d));
        res.on('end', () => resolve({ ok: false, error: `HTTP ${res.statusCode}: ${text.slice(0, 200)}`, ttftMs: 0, e2eMs: 0, itlMs: [], outputTokens: 0 }));
        return;
      }
      let ttftMs = 0, last = 0, outputTokens = 0, buf = '', done = false;
      const itlMs: number[] = [];
      res.on('data', (chunk: string) => {
        buf += chunk;
        let idx: number;
        while ((idx = buf.indexOf('\n\n')) >= 0) {
          const event = buf.slice(0, idx).trim();
          buf = buf.slice(idx + 2);
          if (!event.startsWith('data:')) continue;
          const data = event.slice(5).trim();
          if (data === '[DONE]') { done = true; continue; }
          const j = JSON.parse(data) as { choices?: Array<{ text?: string }>; usage?: { completion_tokens: number } };
          if (j.usage) outputTokens = j.usage.completion_tokens;
          if (j.choices?.length) {
            const now = performance.now();
            if (ttftMs === 0) ttftMs = now - t0;
            else itlMs.push(now - last);
            last = now;
          }
        }
      });
      res.on('end', () => {
        const e2eMs = performance.now() - t0;
        resolve(done ? { ok: true, ttftMs, e2eMs, itlMs, outputTokens } : { ok: false, error: 'stream ended without [DONE]', ttftMs, e2eMs, itlMs, outputTokens });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

export async function runServeBench(o: ServeBenchOptions): Promise<ServeBenchResult> {
  const headers: Record<string, string> = o.apiKey ? { authorization: `Bearer ${o.apiKey}` } : {};
  const model = await modelName(o, headers);
  const prompts = randomPrompts(o.numPrompts, o.isl, 10, (o.vocabSize ?? 32000) - 1, o.seed ?? 1);
  let u = (o.seed ?? 1) * 7919 + 1;
  const exp = () => { u = (u * 1103515245 + 12345) % 2147483648; return -Math.log(1 - u / 2147483648) / o.rate; };
  const stepsBefore = await scrapeSteps(o, headers);
  const t0 = performance.now();
  let done = 0;
  const tasks: Promise<RequestTiming>[] = [];
  for (const p of prompts) {
    tasks.push(oneRequest(o, model, p, headers).catch((e) => ({ ok: false, error: String(e), ttftMs: 0, e2eMs: 0, itlMs: [], outputTokens: 0 })).then((r) => { o.onProgress?.(++done, o.numPrompts); return r; }));
    if (Number.isFinite(o.rate)) await new Promise((r) => setTimeout(r, exp() * 1000));
  }
  const results = await Promise.all(tasks);
  const durationS = (performance.now() - t0) / 1000;
  const engine = engineWindow(stepsBefore, await scrapeSteps(o, headers));
  const ok = results.filter((r) => r.ok);
  const outTokens = ok.reduce((a, r) => a + r.outputTokens, 0);
  return {
    completed: ok.length,
    failed: results.length - ok.length,
    durationS,
    requestsPerS: ok.length / durationS,
    outputTokPerS: outTokens / durationS,
    ttftMs: summarize(ok.map((r) => r.ttftMs)),
    tpotMs: summarize(ok.filter((r) => r.outputTokens > 1).map((r) => (r.e2eMs - r.ttftMs) / (r.outputTokens - 1))),
    itlMs: summarize(ok.flatMap((r) => r.itlMs)),
    errors: results.filter((r) => !r.ok).slice(0, 5).map((r) => r.error ?? 'unknown'),
    engine,
  };
}

export function serveBenchTable(r: ServeBenchResult): string {
  return formatTable([
    ['metric', 'mean', 'p50', 'p99'],
    ['TTFT ms', r.ttftMs.mean, r.ttftMs.p50, r.ttftMs.p99],
    ['TPOT ms', r.tpotMs.mean, r.tpotMs.p50, r.tpotMs.p99],
    ['ITL ms', r.itlMs.mean, r.itlMs.p50, r.itlMs.p99],
  ]) + '\n\n' + formatTable([
    ['completed', 'failed', 'duration s', 'req/s', 'output tok/s'],
    [r.completed, r.failed, r.durationS, r.requestsPerS, r.outputTokPerS],
  ]) + (r.engine ? '\n\n' + formatTable([
    ['server engine steps', 'mean step ms', 'device idle %'],
    [r.engine.numSteps, r.engine.meanStepMs, r.engine.deviceIdlePct],
  ]) : '');
}
