// Shared by the server suites: start a server in-process on 127.0.0.1:0 over a fixture model,
// raw HTTP helpers, and an SSE reader.
import { fileURLToPath } from 'node:url';
import { startServer, type RunningServer, type ServerOptions } from '../src/server/start-server.js';

export const FIXTURES = fileURLToPath(new URL('../../test/fixtures/models/', import.meta.url));
/** the tiny Llama 3 checkpoint with a byte-level BPE tokenizer and a chat template */
export const LLAMA = FIXTURES + 'llama-gqa-llama3';
/** a tiny checkpoint without a tokenizer */
export const NO_TOKENIZER = FIXTURES + 'mistral';

export async function withServer<T>(opts: Partial<ServerOptions>, fn: (s: RunningServer) => Promise<T>): Promise<T> {
  const s = await startServer({ modelDir: LLAMA, port: 0, ...opts });
  try {
    return await fn(s);
  } finally {
    await s.app.close();
    await s.engine.close();
  }
}

export interface JsonResponse {
  status: number;
  headers: Headers;
  body: any;
}

export async function request(url: string, method: string, body?: unknown, headers: Record<string, string> = {}): Promise<JsonResponse> {
  const r = await fetch(url, {
    method,
    headers: { 'Content-Type': 'application/json', ...headers },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await r.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON (metrics, SSE)
  }
  return { status: r.status, headers: r.headers, body: parsed };
}

export const post = (url: string, body: unknown, headers?: Record<string, string>) => request(url, 'POST', body, headers);
export const get = (url: string, headers?: Record<string, string>) => request(url, 'GET', undefined, headers);

/** The `data:` payloads of an SSE body, parsed (the final `[DONE]` kept as the string). */
export function parseSse(text: string): unknown[] {
  return text
    .split('\n\n')
    .filter((e) => e.startsWith('data: '))
    .map((e) => e.slice('data: '.length))
    .map((d) => (d === '[DONE]' ? d : JSON.parse(d)));
}

/** Polls the engine until nothing runs or waits and no KV block is held; returns the last stats. */
export async function waitIdle(s: RunningServer, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const st = await s.engine.stats();
    if ((st.numRunning === 0 && st.numWaiting === 0 && st.numUsedBlocks === 0) || Date.now() > deadline) return st;
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Random token ids in [3, vocab) (0..2 are special in the fixtures). */
export function randomPrompt(len: number, seed: number, vocab = 384): number[] {
  let x = seed * 2654435761 + 1;
  return Array.from({ length: len }, () => {
    x = (x * 1103515245 + 12345) % 2147483648;
    return 3 + (x % (vocab - 3));
  });
}

/** Starts a streamed request and resolves once its first bytes arrived (so it is running); `rest` reads it to the end. */
export async function openStream(url: string, body: unknown): Promise<{ first: string; rest: () => Promise<string> }> {
  const res = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  const first = decoder.decode((await reader.read()).value, { stream: true });
  const rest = async () => {
    let text = first;
    for (let r = await reader.read(); !r.done; r = await reader.read()) text += decoder.decode(r.value, { stream: true });
    return text;
  };
  return { first, rest };
}
