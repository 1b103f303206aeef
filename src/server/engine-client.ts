/**
 * The HTTP thread's handle on the engine worker: submits requests, aborts them, asks for stats.
 * If the worker dies (crash, fatal engine error, exit) every open stream fails with
 * PGN_ERR_ENGINE_DEAD and every later call throws it at once: the server answers 503, never hangs.
 */
import { Worker } from 'node:worker_threads';
import { AsyncQueue } from '../api/async-queue.js';
import type { StreamDelta } from '../api/outputs.js';
import { PeregrineError } from '../errors.js';
import type { SamplingParamsInit } from '../sampling/params.js';
import type { EngineInfo, EngineStats, EngineWorkerData, FromWorker, ToWorker, WireError, WorkerBatch } from './engine-protocol.js';

/** How long a stats round trip may take before the engine counts as unresponsive. */
export const DEFAULT_STATS_TIMEOUT_MS = 5000;

export interface EngineRequest {
  readonly requestId: string;
  readonly promptTokenIds: number[];
  readonly params: SamplingParamsInit;
}

interface Pending {
  accept: (s: AsyncQueue<StreamDelta>) => void;
  reject: (e: PeregrineError) => void;
  queue: AsyncQueue<StreamDelta>;
  accepted: boolean;
}

/** The parent's node flags minus those that only make sense for a main script (`-e CODE`, `--input-type`). */
function workerExecArgv(): string[] {
  const out: string[] = [];
  const args = process.execArgv;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (['-e', '--eval', '-p', '--print'].includes(a)) i++;
    else if (!a.startsWith('--input-type') && !a.startsWith('--eval=') && !a.startsWith('--print=')) out.push(a);
  }
  return out;
}

export function fromWire(e: WireError): PeregrineError {
  return new PeregrineError(e.code === 'UNKNOWN' ? 'PGN_ERR_INTERNAL' : e.code, e.message, e.details);
}

export class EngineClient {
  private readonly requests = new Map<string, Pending>();
  private readonly statsWaiters = new Map<number, { resolve: (s: EngineStats) => void; reject: (e: PeregrineError) => void }>();
  private nextStatsSeq = 0;
  private deadError: PeregrineError | null = null;
  private closing = false;
  private readonly closedPromise: Promise<void>;
  private resolveDied!: (reason: string) => void;
  /** Resolves with the reason once the engine is down (crash, fatal error, or close). */
  readonly died = new Promise<string>((resolve) => (this.resolveDied = resolve));

  private constructor(private readonly worker: Worker, readonly info: EngineInfo) {
    worker.on('message', (batch: WorkerBatch) => batch.forEach((m) => this.onMessage(m)));
    worker.on('error', (e) => this.markDead(`the engine worker crashed: ${e.message}`));
    this.closedPromise = new Promise((resolve) => {
      worker.on('exit', (code) => {
        this.markDead(this.closing ? 'the engine was shut down' : `the engine worker exited (code ${code})`);
        resolve();
      });
    });
  }

  /**
   * Starts the worker and loads the model in it.
   * @throws PeregrineError the load error (its code, e.g. PGN_ERR_CONFIG_NOT_FOUND), or
   *   PGN_ERR_ENGINE_DEAD when the worker dies before it is ready.
   */
  static start(data: EngineWorkerData): Promise<EngineClient> {
    const worker = new Worker(new URL('./engine-worker.js', import.meta.url), { workerData: data, execArgv: workerExecArgv() });
    return new Promise((resolve, reject) => {
      const onMessage = (batch: WorkerBatch) => {
        for (const m of batch) {
          if (m.t === 'ready') {
            cleanup();
            const client = new EngineClient(worker, m.info);
            client.onMessages(batch.slice(batch.indexOf(m) + 1));
            resolve(client);
            return;
          }
          if (m.t === 'load-error') {
            cleanup();
            void worker.terminate();
            reject(fromWire(m.error));
            return;
          }
        }
      };
      const onError = (e: Error) => { cleanup(); reject(new PeregrineError('PGN_ERR_ENGINE_DEAD', `the engine worker crashed while loading: ${e.message}`, {}, { cause: e })); };
      const onExit = (code: number) => { cleanup(); reject(new PeregrineError('PGN_ERR_ENGINE_DEAD', `the engine worker exited (code ${code}) while loading`)); };
      const cleanup = () => { worker.off('message', onMessage); worker.off('error', onError); worker.off('exit', onExit); };
      worker.on('message', onMessage);
      worker.on('error', onError);
      worker.on('exit', onExit);
    });
  }

  get isAlive(): boolean {
    return this.deadError === null;
  }

  /** Why the engine is down (null while it runs). */
  get deadReason(): string | null {
    return this.deadError?.message ?? null;
  }

  /**
   * Queues a request; resolves once the engine admitted it, with its stream of deltas
   * (ends when every completion finished; fails with PGN_ERR_ENGINE_DEAD if the worker dies).
   * @throws PeregrineError as the engine's addRequest (PGN_ERR_QUEUE_FULL, PGN_ERR_PROMPT_TOO_LONG,
   *   PGN_ERR_INVALID_ARGUMENT, ...), or PGN_ERR_ENGINE_DEAD.
   */
  submit(req: EngineRequest): Promise<AsyncQueue<StreamDelta>> {
    if (this.deadError) return Promise.reject(this.deadError);
    if (this.requests.has(req.requestId)) {
      return Promise.reject(new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `request id ${req.requestId} is already in use`, { param: 'request_id' }));
    }
    return new Promise((accept, reject) => {
      const queue = new AsyncQueue<StreamDelta>(() => this.abort(req.requestId));
      this.requests.set(req.requestId, { accept, reject, queue, accepted: false });
      this.send({ t: 'add', id: req.requestId, promptTokenIds: req.promptTokenIds, params: req.params });
    });
  }

  /** Aborts a request: its stream ends at once and the engine frees its blocks. Unknown ids are ignored. */
  abort(requestId: string): void {
    const p = this.requests.get(requestId);
    if (!p) return;
    this.requests.delete(requestId);
    p.queue.close();
    if (!this.deadError) this.send({ t: 'abort', id: requestId });
  }

  /**
   * The engine's counters.
   * @throws PeregrineError PGN_ERR_ENGINE_DEAD when the worker is down or does not answer in `timeoutMs`.
   */
  stats(timeoutMs = DEFAULT_STATS_TIMEOUT_MS): Promise<EngineStats> {
    if (this.deadError) return Promise.reject(this.deadError);
    const seq = this.nextStatsSeq++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.statsWaiters.delete(seq);
        reject(new PeregrineError('PGN_ERR_ENGINE_DEAD', `the engine did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.statsWaiters.set(seq, {
        resolve: (s) => { clearTimeout(timer); resolve(s); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      this.send({ t: 'stats', seq });
    });
  }

  /** For tests and fault drills: kills the worker as a crash would. */
  async kill(): Promise<void> {
    await this.worker.terminate();
    await this.closedPromise;
  }

  /** Frees the model and ends the worker. */
  async close(): Promise<void> {
    if (!this.deadError) {
      this.closing = true;
      this.send({ t: 'close' });
      const timer = setTimeout(() => void this.worker.terminate(), DEFAULT_STATS_TIMEOUT_MS);
      await this.closedPromise;
      clearTimeout(timer);
    }
  }

  private send(m: ToWorker): void {
    this.worker.postMessage(m);
  }

  private onMessages(ms: FromWorker[]): void {
    ms.forEach((m) => this.onMessage(m));
  }

  private onMessage(m: FromWorker): void {
    switch (m.t) {
      case 'accepted': {
        const p = this.requests.get(m.id);
        if (p) { p.accepted = true; p.accept(p.queue); }
        break;
      }
      case 'delta':
        this.requests.get(m.id)?.queue.push(m.delta);
        break;
      case 'end': {
        const p = this.requests.get(m.id);
        this.requests.delete(m.id);
        p?.queue.close();
        break;
      }
      case 'error': {
        const p = this.requests.get(m.id);
        this.requests.delete(m.id);
        if (p) this.failRequest(p, fromWire(m.error));
        break;
      }
      case 'stats':
        this.statsWaiters.get(m.seq)?.resolve(m.stats);
        this.statsWaiters.delete(m.seq);
        break;
      case 'fatal':
        this.markDead(`the engine failed: [${m.error.code}] ${m.error.message}`);
        break;
      case 'closed':
        void this.worker.terminate();
        break;
    }
  }

  private failRequest(p: Pending, e: PeregrineError): void {
    if (p.accepted) p.queue.fail(e);
    else p.reject(e);
  }

  private markDead(reason: string): void {
    if (this.deadError) return;
    this.deadError = new PeregrineError('PGN_ERR_ENGINE_DEAD', reason);
    this.resolveDied(reason);
    for (const p of this.requests.values()) this.failRequest(p, this.deadError);
    this.requests.clear();
    for (const w of this.statsWaiters.values()) w.reject(this.deadError);
    this.statsWaiters.clear();
  }
}
