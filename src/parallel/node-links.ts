/**
 * Node 0's connections to the rank hosts (node-host.ts) of a multi-node group: it listens at
 * --master-addr:--master-port, hands the NCCL id to every node through the rendezvous, checks
 * each node was started like itself, then carries the messages of every remote rank. TpPeers
 * opens one RemoteRank per rank on another node; a node whose connection drops is every one
 * of its ranks exiting, with the node named.
 */
import type { Socket } from 'node:net';
import { PeregrineError } from '../errors.js';
import { checkMultiNode, nodeOfRank, ranksOfNode, type FromNode, type MultiNode, type ToNode } from './node-protocol.js';
import { DEFAULT_RENDEZVOUS_TIMEOUT_MS, RendezvousServer } from './rendezvous.js';
import { FramedSocket } from './tcp-transport.js';
import type { FromWorker, ToWorker } from './tp-protocol.js';

export interface RemoteRankEvents {
  onMessage(m: FromWorker): void;
  /** once: the worker exited, or its node is gone (`how` names the node) */
  onExit(how: string): void;
}

/** A rank on another node, as TpPeers drives it. */
export interface RemoteRank {
  /** resolves once handed to the OS (so rank 0 may block in NCCL after it) */
  send(m: ToWorker): Promise<void>;
  kill(): void;
}

type Link = FramedSocket<FromNode, ToNode>;

/** one message on its way to some ranks of one node, sent at the end of this tick */
interface Outgoing {
  readonly m: ToWorker;
  readonly ranks: number[];
  readonly sent: Promise<void>;
  resolve(): void;
}

export class NodeLinks {
  private readonly events = new Map<number, RemoteRankEvents>();
  /** ranks gone, with how (kept for a rank whose events are not registered yet) */
  private readonly exits = new Map<number, string>();
  private readonly hellos = new Map<number, (m: FromNode & { t: 'node' }) => void>();
  private readonly outbox = new Map<number, Outgoing>();

  private constructor(
    private readonly links: ReadonlyMap<number, Link>,
    readonly nodes: MultiNode,
    readonly tp: number,
  ) {
    for (const [nodeRank, link] of links) {
      link.onMessage((m) => this.onMessage(nodeRank, m));
      link.onClose((why) => {
        for (const r of ranksOfNode(tp, nodes.nnodes, nodeRank)) this.rankExited(r, `${link.peer} is gone: ${why}`);
      });
    }
  }

  /**
   * Node 0: waits (at most nodes.timeoutMs) for nodes 1..nnodes-1 to join and say they run the same tp.
   * @throws PeregrineError PGN_ERR_ENGINE_DEAD naming the nodes that did not join in time,
   *   PGN_ERR_INVALID_ARGUMENT when the address cannot be listened on or a node was started with another --tp
   */
  static async accept(nodes: MultiNode, tp: number, ncclId: Uint8Array): Promise<NodeLinks> {
    checkMultiNode(nodes, tp);
    const timeoutMs = nodes.timeoutMs ?? DEFAULT_RENDEZVOUS_TIMEOUT_MS;
    const { sockets } = await RendezvousServer.listenSession({ host: nodes.masterAddr, port: nodes.masterPort, nnodes: nodes.nnodes, timeoutMs }, ncclId);
    const joined = await sockets;
    const links = new Map([...joined].map(([k, s]) => [k, new FramedSocket<FromNode, ToNode>(s, `node ${k} at ${describe(s)}`)] as const));
    const group = new NodeLinks(links, nodes, tp);
    try {
      await group.handshake(timeoutMs);
    } catch (e) {
      group.refuse((e as Error).message);
      throw e;
    }
    return group;
  }

  /** Whether `rank` runs on another node. */
  hosts(rank: number): boolean {
    return nodeOfRank(rank, this.tp, this.nodes.nnodes) !== 0;
  }

  /** The link to the node that hosts `rank`; `events` get its messages and its exit. */
  open(rank: number, events: RemoteRankEvents): RemoteRank {
    const nodeRank = nodeOfRank(rank, this.tp, this.nodes.nnodes);
    const link = this.links.get(nodeRank);
    if (!link) throw new PeregrineError('PGN_ERR_INTERNAL', `rank ${rank} is not on a remote node of this group`, { rank });
    this.events.set(rank, events);
    const gone = this.exits.get(rank);
    if (gone !== undefined) queueMicrotask(() => events.onExit(gone));
    return {
      send: (m) => this.enqueue(nodeRank, rank, m),
      kill: () => {
        this.flush(nodeRank);
        void link.send({ t: 'kill', rank });
      },
    };
  }

  /** Ends every connection (the hosts exit once theirs closes). */
  close(): void {
    for (const link of this.links.values()) link.end();
  }

  /** Writes every frame still gathering ranks (TpPeers.send calls it once every rank has its message). */
  flushAll(): void {
    for (const nodeRank of [...this.outbox.keys()]) this.flush(nodeRank);
  }

  /** Sends of the same message to several ranks of a node in one tick (TpPeers.send) travel as one frame. */
  private enqueue(nodeRank: number, rank: number, m: ToWorker): Promise<void> {
    let o = this.outbox.get(nodeRank);
    if (o && o.m !== m) {
      this.flush(nodeRank);
      o = undefined;
    }
    if (!o) {
      let resolve!: () => void;
      const sent = new Promise<void>((r) => (resolve = r));
      const created: Outgoing = { m, ranks: [], sent, resolve };
      this.outbox.set(nodeRank, created);
      queueMicrotask(() => this.flush(nodeRank, created));
      o = created;
    }
    o.ranks.push(rank);
    return o.sent;
  }

  private flush(nodeRank: number, only?: Outgoing): void {
    const o = this.outbox.get(nodeRank);
    if (!o || (only && o !== only)) return;
    this.outbox.delete(nodeRank);
    void this.links.get(nodeRank)!.send({ t: 'to', ranks: o.ranks, m: o.m }).then(o.resolve);
  }

  private async handshake(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const waits = [...this.links].map(([k, link]) => new Promise<void>((resolve, reject) => {
      link.onClose((why) => reject(new PeregrineError('PGN_ERR_ENGINE_DEAD', `${link.peer} left before saying how it was started: ${why}`, { nodeRank: k })));
      this.hellos.set(k, (m) => {
        if (m.tp !== this.tp) reject(new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `node ${k} (${m.hostname}) was started with --tp ${m.tp}, node 0 with --tp ${this.tp}`, { nodeRank: k, param: 'tp' }));
        else resolve();
      });
    }));
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new PeregrineError('PGN_ERR_ENGINE_DEAD', `nodes joined the rendezvous but did not say how they were started within ${timeoutMs} ms`, {})), timeoutMs);
    });
    try {
      await Promise.race([Promise.all(waits), late]);
    } finally {
      clearTimeout(timer);
      this.hellos.clear();
    }
  }

  private refuse(reason: string): void {
    for (const link of this.links.values()) {
      void link.send({ t: 'refused', reason });
      link.end();
    }
  }

  private onMessage(nodeRank: number, m: FromNode): void {
    if (m.t === 'node') return this.hellos.get(nodeRank)?.(m);
    if (nodeOfRank(m.rank, this.tp, this.nodes.nnodes) !== nodeRank) return; // not this node's rank: ignored
    if (m.t === 'from') this.events.get(m.rank)?.onMessage(m.m);
    else this.rankExited(m.rank, `${m.how} on node ${nodeRank}`);
  }

  private rankExited(rank: number, how: string): void {
    if (this.exits.has(rank)) return;
    this.exits.set(rank, how);
    this.events.get(rank)?.onExit(how);
  }
}

function describe(s: Socket): string {
  return `${s.remoteAddress ?? '?'}:${s.remotePort ?? '?'}`;
}
