/**
 * Serving benchmark client (like vLLM's benchmark_serving): streamed /v1/completions
 * with random token-id prompts, Poisson arrivals at `rate` req/s (or all at once),
 * reporting TTFT, TPOT and ITL (mean, p50, p99), requests/s and output tok/s.
 */
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

async function oneRequest(o: ServeBenchOptions, model: string, prompt: number[], headers: Record<string, string>): Promise<RequestTiming> {
  const t0 = performance.now();
  const res = await fetch(new URL('/v1/completions', o.url), {
    method: 'POST',
    headers: { ...headers, 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt, max_tokens: o.osl, ignore_eos: true, temperature: 1, stream: true, stream_options: { include_usage: true } }),
  });
  if (!res.ok || !res.body) return { ok: false, error: `HTTP ${res.status}: ${(await res.text()).slice(0, 200)}`, ttftMs: 0, e2eMs: 0, itlMs: [], outputTokens: 0 };
  let ttftMs = 0, last = 0, outputTokens = 0, buf = '', done = false;
  const itlMs: number[] = [];
  const decoder = new TextDecoder();
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(chunk, { stream: true });
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
  }
  const e2eMs = performance.now() - t0;
  return done ? { ok: true, ttftMs, e2eMs, itlMs, outputTokens } : { ok: false, error: 'stream ended without [DONE]', ttftMs, e2eMs, itlMs, outputTokens };
}

export async function runServeBench(o: ServeBenchOptions): Promise<ServeBenchResult> {
  const headers: Record<string, string> = o.apiKey ? { authorization: `Bearer ${o.apiKey}` } : {};
  const model = await modelName(o, headers);
  const prompts = randomPrompts(o.numPrompts, o.isl, 10, (o.vocabSize ?? 32000) - 1, o.seed ?? 1);
  let u = (o.seed ?? 1) * 7919 + 1;
  const exp = () => { u = (u * 1103515245 + 12345) % 2147483648; return -Math.log(1 - u / 2147483648) / o.rate; };
  const t0 = performance.now();
  let done = 0;
  const tasks: Promise<RequestTiming>[] = [];
  for (const p of prompts) {
    tasks.push(oneRequest(o, model, p, headers).catch((e) => ({ ok: false, error: String(e), ttftMs: 0, e2eMs: 0, itlMs: [], outputTokens: 0 })).then((r) => { o.onProgress?.(++done, o.numPrompts); return r; }));
    if (Number.isFinite(o.rate)) await new Promise((r) => setTimeout(r, exp() * 1000));
  }
  const results = await Promise.all(tasks);
  const durationS = (performance.now() - t0) / 1000;
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
  ]);
}
