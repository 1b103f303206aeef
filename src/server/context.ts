/** What every route handler gets: the engine, the tokenizer, metrics and the served model's name. */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import type { EngineClient } from './engine-client.js';
import { modelNotFound } from './errors.js';
import type { ServerMetrics } from './metrics.js';

export interface ServerContext {
  readonly engine: EngineClient;
  /** null for a checkpoint without a tokenizer: prompts must then be token ids */
  readonly tokenizer: Tokenizer | null;
  readonly metrics: ServerMetrics;
  readonly servedModelName: string;
  /** where the checkpoint was loaded from (shown as the model's `root`) */
  readonly modelDir: string;
  /** when the server started, in Unix seconds */
  readonly createdS: number;
}

export type Handler = (ctx: ServerContext, req: IncomingMessage, res: ServerResponse, body: Record<string, unknown>) => Promise<void>;

/** @throws ApiError 404 model_not_found when `model` is set (not empty) and is not the served model. */
export function checkModel(ctx: ServerContext, model: string | undefined): void {
  if (model !== undefined && model !== '' && model !== ctx.servedModelName) throw modelNotFound(model, ctx.servedModelName);
}

export function sendJson(res: ServerResponse, status: number, value: unknown): void {
  const body = JSON.stringify(value);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

/** An id in OpenAI's style: prefix + 32 hex digits. */
export function newId(prefix: string): string {
  return `${prefix}-${randomUUID().replaceAll('-', '')}`;
}

export const nowS = () => Math.floor(Date.now() / 1000);

/** Aborts `gen` if the client goes away (or already went, while the engine admitted it) before the response is complete. */
export function abortOnDisconnect(res: ServerResponse, gen: { abort(): void }): void {
  if (res.destroyed && !res.writableFinished) return gen.abort();
  res.once('close', () => {
    if (!res.writableFinished) gen.abort();
  });
}
