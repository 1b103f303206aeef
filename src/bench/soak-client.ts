/**
 * One soak client: streamed completions and chats back to back until the deadline, a share of
 * them cancelled after a random number of chunks or milliseconds. A request counts as served
 * when every choice got a finish_reason and the stream ended with `data: [DONE]`; anything
 * else that is not our own cancel is an error.
 */

export interface ClientTally {
  served: number;
  cancelled: number;
  errors: number;
  errorSamples: string[];
}

export interface ClientOptions {
  readonly deadline: number;
  readonly cancelRate: number;
  readonly maxTokens: number;
  /** true once the run must end early (server crashed) */
  readonly stop: () => boolean;
}

const MAX_ERROR_SAMPLES = 10;
const MAX_CANCEL_DELAY_MS = 200;
const MAX_CANCEL_CHUNKS = 12;
const WORDS = ['the', 'nation', 'liberty', 'of', 'times', 'wisdom', 'four', 'score', 'brave', 'men', 'field', 'great', 'war', 'dead', 'people', 'earth'];

/** Small deterministic generator per client (xorshift32). */
function rng(seed: number): () => number {
  let x = (seed * 2654435761) >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

function randomBody(rand: () => number, maxTokens: number): { path: string; body: Record<string, unknown>; n: number } {
  const words = Array.from({ length: 1 + Math.floor(rand() * 40) }, () => WORDS[Math.floor(rand() * WORDS.length)]).join(' ');
  const n = rand() < 0.1 ? 2 : 1;
  const maxT = 1 + Math.floor(rand() * maxTokens);
  const common = {
    stream: true,
    max_tokens: maxT,
    temperature: rand() < 0.5 ? 0 : 0.8,
    n,
    ...(rand() < 0.3 && { stream_options: { include_usage: true } }),
    ...(rand() < 0.1 && { stop: [' the'] }),
    ...(rand() < 0.2 && { ignore_eos: true }),
    // rows reading the token history (async scheduling launches them with a token in flight)
    ...(rand() < 0.15 && { presence_penalty: 0.5, frequency_penalty: 0.3 }),
    ...(rand() < 0.1 && { repetition_penalty: 1.2 }),
    ...(rand() < 0.1 && { min_tokens: Math.min(4, maxT) }),
  };
  if (rand() < 0.5) return { path: '/v1/completions', body: { prompt: words, ...common, ...(rand() < 0.2 && { logprobs: 2 }) }, n };
  return { path: '/v1/chat/completions', body: { messages: [{ role: 'user', content: words }], ...common }, n };
}

function recordError(t: ClientTally, what: string): void {
  t.errors++;
  if (t.errorSamples.length < MAX_ERROR_SAMPLES) t.errorSamples.push(what);
}

export async function driveClient(url: string, index: number, tally: ClientTally, opts: ClientOptions): Promise<void> {
  const rand = rng(index + 1);
  while (Date.now() < opts.deadline && !opts.stop()) {
    const { path, body, n } = randomBody(rand, opts.maxTokens);
    const cancel = rand() < opts.cancelRate;
    const cancelAfterChunks = cancel && rand() < 0.5 ? Math.floor(rand() * MAX_CANCEL_CHUNKS) : Infinity;
    const ac = new AbortController();
    const timer = cancel && cancelAfterChunks === Infinity ? setTimeout(() => ac.abort(), rand() * MAX_CANCEL_DELAY_MS) : null;
    try {
      const res = await fetch(url + path, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body), signal: ac.signal });
      if (res.status !== 200) {
        recordError(tally, `${path}: HTTP ${res.status} ${await res.text()}`);
        continue;
      }
      const outcome = await readStream(res, n, cancelAfterChunks, ac);
      if (outcome === 'served') tally.served++;
      else if (outcome === 'cancelled') tally.cancelled++;
      else recordError(tally, `${path}: ${outcome}`);
    } catch (e) {
      if (ac.signal.aborted) tally.cancelled++;
      else recordError(tally, `${path}: ${(e as Error).message} ${(e as { cause?: Error }).cause?.message ?? ''}`);
    } finally {
      if (timer) clearTimeout(timer);
    }
  }
}

async function readStream(res: Response, n: number, cancelAfterChunks: number, ac: AbortController): Promise<string> {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  const finished = new Set<number>();
  let buf = '';
  let numChunks = 0;
  let done = false;
  for (;;) {
    const r = await reader.read();
    if (r.done) break;
    buf += decoder.decode(r.value, { stream: true });
    let end: number;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, end);
      buf = buf.slice(end + 2);
      if (!event.startsWith('data: ')) return `malformed event ${JSON.stringify(event.slice(0, 80))}`;
      const data = event.slice(6);
      if (data === '[DONE]') {
        done = true;
        continue;
      }
      const chunk = JSON.parse(data) as { error?: { code: string; message: string }; choices: Array<{ index: number; finish_reason: string | null; logprobs?: { tokens?: string[]; content?: unknown[] } }> };
      if (chunk.error) return `error event ${chunk.error.code}: ${chunk.error.message}`;
      for (const c of chunk.choices) if (c.finish_reason) finished.add(c.index);
      if (++numChunks >= cancelAfterChunks) {
        ac.abort();
        await reader.cancel().catch(() => {});
        return 'cancelled';
      }
    }
  }
  if (ac.signal.aborted) return 'cancelled';
  if (!done) return 'the stream ended without [DONE]';
  if (finished.size !== n) return `${finished.size} of ${n} choices got a finish_reason`;
  return 'served';
}
