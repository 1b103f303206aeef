/**
 * Ranks 1..tp-1 as seen from rank 0: worker threads (CPU) or forked processes (one GPU
 * each), or ranks on other nodes reached through their node's connection (node-links.ts),
 * what they report, and how they end. The first error or unexpected exit marks the
 * group dead: every wait rejects with it and `onDeath` listeners run (rank 0 aborts its
 * communicator there, so a collective never waits for a rank that is gone).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { PeregrineError, type ErrorCode } from '../errors.js';
import type { NodeLinks } from './node-links.js';
import type { FromWorker, ToWorker, TpWorkerInit } from './tp-protocol.js';

/** how long stopped workers get to free their memory before they are killed */
const STOP_GRACE_MS = 5_000;
const WORKER_URL = new URL('./tp-worker.js', import.meta.url);

export type Transport = 'thread' | 'process';

export interface TpPeersOptions {
  /** multi-node: the ranks these links host run on other nodes */
  readonly remote?: NodeLinks;
  /** tests: the worker script (default tp-worker.js) */
  readonly workerUrl?: URL;
}

interface Deferred {
  readonly promise: Promise<void>;
  resolve(): void;
  reject(e: unknown): void;
}

function deferred(): Deferred {
  let resolve!: () => void, reject!: (e: unknown) => void;
  const promise = new Promise<void>((res, rej) => { resolve = res; reject = rej; });
  promise.catch(() => {}); // rejections are read by waitAll; none may go unhandled meanwhile
  return { promise, resolve, reject };
}

interface Peer {
  readonly rank: number;
  readonly phases: { readonly loaded: Deferred; readonly ready: Deferred };
  readonly exited: Promise<void>;
  /** resolves once the message is handed to the OS (a process's IPC pipe), so rank 0 may block after it */
  send(m: ToWorker): Promise<void>;
  kill(): void;
}

export class TpPeers {
  private deadError: PeregrineError | null = null;
  private running = false;
  private stopping = false;
  private readonly deathListeners: ((e: PeregrineError) => void)[] = [];
  private readonly peers: Peer[];

  /** Starts one worker per init (ranks 1..tp-1) and sends each its init. */
  constructor(inits: readonly TpWorkerInit[], transport: Transport, private readonly opts: TpPeersOptions = {}) {
    this.peers = inits.map((init) => this.spawn(init, opts.remote?.hosts(init.rank) ? 'remote' : transport));
  }

  /** why the group is dead, or null */
  get dead(): PeregrineError | null {
    return this.deadError;
  }

  onDeath(fn: (e: PeregrineError) => void): void {
    this.deathListeners.push(fn);
    if (this.deadError) fn(this.deadError);
  }

  /** Resolves once every worker reported `phase`; rejects when one fails first. */
  async waitAll(phase: 'loaded' | 'ready'): Promise<void> {
    await Promise.all(this.peers.map((p) => p.phases[phase].promise));
    if (phase === 'ready') this.running = true;
  }

  /**
   * Sends `m` to every worker; resolves once it is on its way. Remote ranks' frames are written before this
   * returns, not at the next microtask: the caller may block this thread next (NCCL init, or a driver call
   * that waits for a collective the remote ranks join only once they have this step).
   */
  async send(m: ToWorker): Promise<void> {
    const sent = this.peers.map((p) => p.send(m));
    this.opts.remote?.flushAll();
    await Promise.all(sent);
  }

  /** Ends rank `rank` abruptly, as a crash would (SIGKILL / thread termination); resolves once it is gone. */
  async kill(rank: number): Promise<void> {
    const peer = this.peers.find((p) => p.rank === rank);
    peer?.kill();
    await peer?.exited;
  }

  /** Asks every worker to free its memory and exit; resolves once the request is sent. */
  async requestStop(): Promise<void> {
    this.stopping = true;
    await this.send({ t: 'stop' });
  }

  /** Resolves once every worker has exited, killing those still there after a grace period. */
  async exited(): Promise<void> {
    const timer = setTimeout(() => this.peers.forEach((p) => p.kill()), STOP_GRACE_MS);
    await Promise.all(this.peers.map((p) => p.exited));
    clearTimeout(timer);
  }

  async stop(): Promise<void> {
    await this.requestStop();
    await this.exited();
  }

  private markDead(e: PeregrineError): void {
    if (this.deadError || this.stopping) return;
    this.deadError = e;
    for (const p of this.peers) {
      p.phases.loaded.reject(e);
      p.phases.ready.reject(e);
    }
    for (const fn of this.deathListeners) fn(e);
  }

  private onMessage(rank: number, m: FromWorker): void {
    if (m.t === 'error') {
      // a load error keeps its code (bad checkpoint, ...); once serving, any failure is a dead engine
      const code = (this.running ? 'PGN_ERR_ENGINE_DEAD' : m.code) as ErrorCode;
      this.markDead(new PeregrineError(code, `tensor-parallel rank ${rank} failed: ${m.message}`, { rank }));
      return;
    }
    this.peers.find((p) => p.rank === rank)?.phases[m.t].resolve();
  }

  private onExit(rank: number, how: string): void {
    this.markDead(new PeregrineError('PGN_ERR_ENGINE_DEAD', `tensor-parallel rank ${rank} exited (${how})`, { rank }));
  }

  private spawn(init: TpWorkerInit, transport: Transport | 'remote'): Peer {
    const { rank } = init;
    const phases = { loaded: deferred(), ready: deferred() };
    const url = this.opts.workerUrl ?? WORKER_URL;
    let peer: Peer;
    if (transport === 'remote') {
      let resolveExit!: () => void;
      const exited = new Promise<void>((resolve) => (resolveExit = resolve));
      const r = this.opts.remote!.open(rank, {
        onMessage: (m) => this.onMessage(rank, m),
        onExit: (how) => { this.onExit(rank, how); resolveExit(); },
      });
      peer = { rank, phases, exited, send: (m) => r.send(m), kill: () => r.kill() };
    } else if (transport === 'thread') {
      const w = new Worker(url, { execArgv: [] });
      w.on('message', (m: FromWorker) => this.onMessage(rank, m));
      w.on('error', (e) => this.markDead(new PeregrineError('PGN_ERR_ENGINE_DEAD', `tensor-parallel rank ${rank} crashed: ${e.message}`, { rank }, { cause: e })));
      const exited = new Promise<void>((resolve) => w.on('exit', (code) => { this.onExit(rank, `code ${code}`); resolve(); }));
      peer = { rank, phases, exited, send: async (m) => w.postMessage(m), kill: () => void w.terminate() };
    } else {
      const c: ChildProcess = fork(fileURLToPath(url), [], {
        serialization: 'advanced', // typed arrays of the ForwardBatch travel as such
        execArgv: [],
        env: { ...process.env, NCCL_NVLS_ENABLE: '0' }, // never NVLink multicast on shared hosts
      });
      c.on('message', (m: FromWorker) => this.onMessage(rank, m));
      c.on('error', (e) => this.markDead(new PeregrineError('PGN_ERR_ENGINE_DEAD', `tensor-parallel rank ${rank} could not start: ${e.message}`, { rank }, { cause: e })));
      const exited = new Promise<void>((resolve) => c.on('exit', (code, signal) => { this.onExit(rank, signal ? `signal ${signal}` : `code ${code}`); resolve(); }));
      const send = (m: ToWorker) => new Promise<void>((resolve) => (c.connected ? c.send(m, () => resolve()) : resolve()));
      peer = { rank, phases, exited, send, kill: () => void c.kill('SIGKILL') };
    }
    void peer.send({ t: 'init', init });
    return peer;
  }
}
