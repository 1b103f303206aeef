/**
 * A rank host: what `peregrine generate|serve|bench ... --nnodes N --node-rank K` (K > 0) runs.
 * It joins node 0's rendezvous, says how it was started, then forks one worker (tp-worker.ts,
 * one GPU each) per rank node 0 sends an init for, relays node 0's messages to them and theirs
 * back, and returns once node 0 has stopped them and closed the connection. Its own --model
 * folder and GPUs replace node 0's in each init (the same command on every node).
 *
 * @example
 * await runNodeHost({ nodes: { nnodes: 2, nodeRank: 1, masterAddr: '10.0.0.1', masterPort: 29500 }, tp: 16, modelDir: '/models/llama-70b' });
 */
import { fork, type ChildProcess } from 'node:child_process';
import { hostname } from 'node:os';
import { fileURLToPath } from 'node:url';
import { PeregrineError } from '../errors.js';
import { checkMultiNode, ranksOfNode, type FromNode, type MultiNode, type ToNode } from './node-protocol.js';
import { joinRendezvousSession } from './rendezvous.js';
import { FramedSocket } from './tcp-transport.js';
import type { FromWorker, ToWorker, TpWorkerInit } from './tp-protocol.js';

const WORKER_URL = new URL('./tp-worker.js', import.meta.url);
/** how long stopped workers get to exit once node 0 has gone, before they are killed */
const STOP_GRACE_MS = 5_000;

export interface NodeHostOptions {
  readonly nodes: MultiNode;
  readonly tp: number;
  /** this node's copy of the checkpoint (default: node 0's path, as sent) */
  readonly modelDir?: string;
  /** the GPU of each of this node's ranks, in rank order (default 0 .. tp/nnodes-1) */
  readonly deviceIds?: readonly number[];
  /** tests: the worker script forked per rank */
  readonly workerUrl?: URL;
  /** progress lines ("node 1: rank 2 loaded", ...) */
  readonly log?: (line: string) => void;
}

/**
 * Hosts this node's ranks until node 0 stops them.
 * @throws PeregrineError PGN_ERR_INVALID_ARGUMENT for a bad layout or when node 0 refuses this node,
 *   PGN_ERR_ENGINE_DEAD when node 0 is not there within nodes.timeoutMs or goes away while the ranks run
 */
export async function runNodeHost(opts: NodeHostOptions): Promise<void> {
  const { nodes, tp } = opts;
  checkMultiNode(nodes, tp);
  if (nodes.nodeRank === 0) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', 'node 0 runs rank 0 (the scheduler), not a rank host', { param: 'node_rank' });
  const ranks = ranksOfNode(tp, nodes.nnodes, nodes.nodeRank);
  const deviceIds = opts.deviceIds ?? ranks.map((_, i) => i);
  if (deviceIds.length < ranks.length) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `node ${nodes.nodeRank} hosts ${ranks.length} ranks but was given ${deviceIds.length} GPUs [${deviceIds.join(', ')}]`, { param: 'deviceIds' });
  const where = `${nodes.masterAddr}:${nodes.masterPort}`;
  opts.log?.(`node ${nodes.nodeRank} of ${nodes.nnodes}: ranks ${ranks[0]}..${ranks.at(-1)} on GPUs ${deviceIds.slice(0, ranks.length).join(', ')}; joining node 0 at ${where}`);
  const { socket } = await joinRendezvousSession({ host: nodes.masterAddr, port: nodes.masterPort, nnodes: nodes.nnodes, timeoutMs: nodes.timeoutMs }, nodes.nodeRank);
  const link = new FramedSocket<ToNode, FromNode>(socket, `node 0 at ${where}`);
  const host = new RankHost(link, nodes.nodeRank, ranks, deviceIds, opts);
  opts.log?.(`node ${nodes.nodeRank}: joined node 0 at ${where}`);
  await link.send({ t: 'node', nodeRank: nodes.nodeRank, tp, hostname: hostname() });
  return host.finished;
}

class RankHost {
  private readonly workers = new Map<number, ChildProcess>();
  private readonly exited = new Map<number, Promise<void>>();
  private readonly stopped = new Set<number>();
  private refusal: string | null = null;
  readonly finished: Promise<void>;

  constructor(
    private readonly link: FramedSocket<ToNode, FromNode>,
    private readonly nodeRank: number,
    private readonly ranks: readonly number[],
    private readonly deviceIds: readonly number[],
    private readonly opts: NodeHostOptions,
  ) {
    link.onMessage((m) => this.onMessage(m));
    this.finished = new Promise((resolve, reject) => link.onClose((why) => this.closed(why).then(resolve, reject)));
  }

  private onMessage(m: ToNode): void {
    if (m.t === 'refused') {
      this.refusal = m.reason;
      return;
    }
    const ranks = m.t === 'to' ? m.ranks : [m.rank];
    const stranger = ranks.find((r) => !this.ranks.includes(r));
    if (stranger !== undefined) {
      this.refusal = `node 0 sent a message for rank ${stranger}, which node ${this.nodeRank} does not host (ranks ${this.ranks.join(', ')}): were the nodes started with the same --tp and --nnodes?`;
      this.link.destroy();
      return;
    }
    if (m.t === 'kill') return void this.workers.get(m.rank)?.kill('SIGKILL');
    for (const rank of ranks) {
      if (m.m.t === 'init') {
        this.spawn(rank, m.m.init);
        continue;
      }
      if (m.m.t === 'stop') this.stopped.add(rank);
      const w = this.workers.get(rank);
      if (w?.connected) w.send(m.m);
    }
  }

  private spawn(rank: number, sent: TpWorkerInit): void {
    if (this.workers.has(rank)) return;
    const local = this.ranks.indexOf(rank);
    const model = sent.model.kind === 'dir' && this.opts.modelDir !== undefined ? { kind: 'dir' as const, dir: this.opts.modelDir } : sent.model;
    const init: TpWorkerInit = { ...sent, model, deviceId: this.deviceIds[local]! };
    const child = fork(fileURLToPath(this.opts.workerUrl ?? WORKER_URL), [], {
      serialization: 'advanced',
      execArgv: [],
      env: { ...process.env, NCCL_NVLS_ENABLE: '0' }, // never NVLink multicast on shared hosts
    });
    this.workers.set(rank, child);
    const report = (m: FromNode) => void this.link.send(m);
    child.on('message', (m: FromWorker) => {
      if (m.t === 'loaded' || m.t === 'ready') this.opts.log?.(`node ${this.nodeRank}: rank ${rank} ${m.t}`);
      report({ t: 'from', rank, m });
    });
    child.on('error', (e) => report({ t: 'from', rank, m: { t: 'error', code: 'PGN_ERR_ENGINE_DEAD', message: `could not start on node ${this.nodeRank}: ${e.message}` } }));
    this.exited.set(rank, new Promise((resolve) => child.on('exit', (code, signal) => {
      this.workers.delete(rank);
      report({ t: 'exit', rank, how: signal ? `signal ${signal}` : `code ${code}` });
      if (this.workers.size === 0 && this.ranks.every((r) => this.stopped.has(r))) this.link.end(); // all done: node 0 may close too
      resolve();
    })));
    child.send({ t: 'init', init } satisfies ToWorker);
  }

  /** Node 0 closed the connection (or it dropped): a clean end only once every rank was told to stop. */
  private async closed(why: string): Promise<void> {
    const clean = this.refusal === null && this.ranks.every((r) => this.stopped.has(r));
    const timer = setTimeout(() => this.workers.forEach((w) => w.kill('SIGKILL')), clean ? STOP_GRACE_MS : 0);
    await Promise.all(this.exited.values());
    clearTimeout(timer);
    if (this.refusal !== null) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `node 0 refused node ${this.nodeRank}: ${this.refusal}`, { nodeRank: this.nodeRank });
    if (!clean) {
      const running = this.ranks.filter((r) => !this.stopped.has(r));
      throw new PeregrineError('PGN_ERR_ENGINE_DEAD', `node ${this.nodeRank} lost ${this.link.peer} (${why}) while ranks ${running.join(', ')} were running; they were stopped`, { nodeRank: this.nodeRank });
    }
    this.opts.log?.(`node ${this.nodeRank}: stopped`);
  }
}
