/**
 * The OpenAI-compatible HTTP app on node:http: routing, the API key check, body reading,
 * errors in OpenAI's shape, and draining for a graceful stop. The engine lives in a worker
 * thread (engine-client.ts), so this thread only parses, tokenizes and streams.
 *
 * @example
 * const app = createApp({ engine, tokenizer, servedModelName: 'demo', modelDir: dir });
 * const url = await app.listen(8000, '127.0.0.1');
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { PeregrineError } from '../errors.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import { nowS, type Handler, type ServerContext } from './context.js';
import type { EngineClient } from './engine-client.js';
import { engineDead, invalidApiKey, methodNotAllowed, sendError, shuttingDown, toApiError, unknownUrl } from './errors.js';
import { ServerMetrics } from './metrics.js';
import { DEFAULT_MAX_BODY_BYTES, readJsonBody } from './request-body.js';
import { chatRoute } from './routes/chat.js';
import { completionsRoute } from './routes/completions.js';
import { healthRoute } from './routes/health.js';
import { metricsRoute } from './routes/metrics.js';
import { getModelRoute, listModelsRoute, MODEL_PATH_PREFIX } from './routes/models.js';

export interface AppOptions {
  readonly engine: EngineClient;
  readonly tokenizer: Tokenizer | null;
  /** the `model` clients name (default: the model folder's name) */
  readonly servedModelName: string;
  readonly modelDir: string;
  /** when set, /v1/* requests need `Authorization: Bearer <apiKey>` */
  readonly apiKey?: string;
  /** default {@link DEFAULT_MAX_BODY_BYTES} */
  readonly maxBodyBytes?: number;
  readonly metrics?: ServerMetrics;
}

interface Route {
  readonly method: 'GET' | 'POST';
  readonly match: (path: string) => boolean;
  readonly handler: Handler;
  /** under /v1: needs the API key */
  readonly auth: boolean;
  /** runs the engine: refused while draining or once the engine died; counted as in flight */
  readonly generates: boolean;
}

const exact = (p: string) => (path: string) => path === p;
const ROUTES: readonly Route[] = [
  { method: 'GET', match: exact('/v1/models'), handler: listModelsRoute, auth: true, generates: false },
  { method: 'GET', match: (p) => p.startsWith(MODEL_PATH_PREFIX) && p.length > MODEL_PATH_PREFIX.length, handler: getModelRoute, auth: true, generates: false },
  { method: 'POST', match: exact('/v1/completions'), handler: completionsRoute, auth: true, generates: true },
  { method: 'POST', match: exact('/v1/chat/completions'), handler: chatRoute, auth: true, generates: true },
  { method: 'GET', match: exact('/health'), handler: healthRoute, auth: false, generates: false },
  { method: 'GET', match: exact('/metrics'), handler: metricsRoute, auth: false, generates: false },
];

export class PeregrineApp {
  readonly server: http.Server;
  readonly context: ServerContext;
  private readonly apiKeyDigest: Uint8Array | null;
  private readonly maxBodyBytes: number;
  private draining = false;
  private numInFlight = 0;
  private idleWaiters: Array<() => void> = [];

  constructor(opts: AppOptions) {
    this.context = {
      engine: opts.engine,
      tokenizer: opts.tokenizer,
      metrics: opts.metrics ?? new ServerMetrics(opts.servedModelName),
      servedModelName: opts.servedModelName,
      modelDir: opts.modelDir,
      createdS: nowS(),
    };
    this.apiKeyDigest = opts.apiKey ? digest(opts.apiKey) : null;
    this.maxBodyBytes = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
    this.server = http.createServer((req, res) => void this.handle(req, res));
  }

  /**
   * Listens; resolves with the base URL (port 0 picks a free port).
   * @throws PeregrineError PGN_ERR_INVALID_ARGUMENT (param `port`) when the address is taken or not ours.
   */
  listen(port = 8000, host = '127.0.0.1'): Promise<string> {
    return new Promise((resolve, reject) => {
      const onError = (e: Error) =>
        reject(new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `cannot listen on ${host}:${port}: ${e.message}`, { param: 'port' }, { cause: e }));
      this.server.once('error', onError);
      this.server.listen(port, host, () => {
        this.server.off('error', onError);
        const a = this.server.address() as AddressInfo;
        resolve(`http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`);
      });
    });
  }

  /** Requests generating right now. */
  get inFlight(): number {
    return this.numInFlight;
  }

  /** Stops admitting generation requests (503 shutting_down) and resolves once none is in flight. */
  drain(): Promise<void> {
    this.draining = true;
    this.server.closeIdleConnections();
    if (this.numInFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Closes the listener and every connection (in-flight streams are cut: drain first). */
  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    const path = new URL(req.url ?? '/', 'http://localhost').pathname;
    if (this.draining) res.shouldKeepAlive = false;
    try {
      const candidates = ROUTES.filter((r) => r.match(path));
      if (candidates.length === 0) throw unknownUrl(method, path);
      const route = candidates.find((r) => r.method === method);
      if (!route) throw methodNotAllowed(method, path, candidates.map((r) => r.method).join(', '));
      if (route.auth && !this.authorized(req)) throw invalidApiKey();
      if (route.generates && this.draining) throw shuttingDown();
      if (route.generates && !this.context.engine.isAlive) throw engineDead(this.context.engine.deadReason ?? 'unknown');
      const body = route.method === 'POST' ? await readJsonBody(req, this.maxBodyBytes) : {};
      if (!route.generates) return await route.handler(this.context, req, res, body);
      this.numInFlight++;
      res.once('close', () => this.onRequestClosed());
      await route.handler(this.context, req, res, body);
    } catch (e) {
      const err = toApiError(e);
      this.context.metrics.onError(err.code);
      if (err.status === 413) res.shouldKeepAlive = false;
      sendError(res, err);
    }
  }

  private onRequestClosed(): void {
    if (--this.numInFlight > 0 || !this.draining) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    waiters.forEach((w) => w());
  }

  private authorized(req: http.IncomingMessage): boolean {
    if (!this.apiKeyDigest) return true;
    const header = req.headers.authorization ?? '';
    const m = /^Bearer\s+(.+)$/i.exec(header);
    return m !== null && timingSafeEqual(digest(m[1]!.trim()), this.apiKeyDigest);
  }
}

const digest = (s: string) => new Uint8Array(createHash('sha256').update(s).digest());

export function createApp(opts: AppOptions): PeregrineApp {
  return new PeregrineApp(opts);
}
