/**
 * TCP rendezvous of a multi-node group (`--nnodes --node-rank --master-addr --master-port`):
 * node 0 listens, every other node connects and says who it is, and once all `nnodes` have
 * joined node 0 sends each the 128-byte NCCL unique id. Bounded: a node still missing after
 * `timeoutMs` fails the group with PGN_ERR_ENGINE_DEAD rather than hanging it.
 *
 * Wire format (little-endian u32s): hello = magic, nodeRank, nnodes; reply = status 0 + the
 * id, or status 1 + byte length + UTF-8 reason. In session mode (listenSession /
 * joinRendezvousSession) the connections stay open after the id, for the nodes' messages
 * (tcp-transport.ts).
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { PeregrineError } from '../errors.js';

const MAGIC = 0x50474e31; // "PGN1"
const HELLO_BYTES = 12;
const STATUS_OK = 0;
const STATUS_REFUSED = 1;
const RETRY_MS = 200;
export const DEFAULT_RENDEZVOUS_TIMEOUT_MS = 5 * 60_000;

export interface RendezvousAddress {
  readonly host: string;
  /** 0 lets node 0 pick a free port (tests) */
  readonly port: number;
  readonly nnodes: number;
  readonly timeoutMs?: number;
}

export class RendezvousServer {
  private constructor(
    private readonly server: Server,
    /** the port listened on */
    readonly port: number,
    /** resolves once every node has the id; rejects when one is missing after the timeout */
    readonly done: Promise<void>,
  ) {}

  /** Node 0: listens and hands `id` to nodes 1..nnodes-1 once all have joined. */
  static async listen(addr: RendezvousAddress, id: Uint8Array): Promise<RendezvousServer> {
    return (await RendezvousServer.open(addr, id, false)).server;
  }

  /**
   * Node 0 of a session: as listen, but every node's connection stays open once it has the id;
   * `sockets` resolves with them by node rank (1..nnodes-1), or rejects as `done` does.
   */
  static async listenSession(addr: RendezvousAddress, id: Uint8Array): Promise<{ server: RendezvousServer; sockets: Promise<ReadonlyMap<number, Socket>> }> {
    return RendezvousServer.open(addr, id, true);
  }

  private static async open(addr: RendezvousAddress, id: Uint8Array, keepOpen: boolean): Promise<{ server: RendezvousServer; sockets: Promise<ReadonlyMap<number, Socket>> }> {
    const { host, nnodes } = addr;
    const timeoutMs = addr.timeoutMs ?? DEFAULT_RENDEZVOUS_TIMEOUT_MS;
    const joined = new Map<number, Socket>();
    const server = createServer();
    let port = addr.port;
    let finish!: (e?: PeregrineError) => void;
    const sockets = new Promise<ReadonlyMap<number, Socket>>((resolve, reject) => {
      finish = (e) => {
        clearTimeout(timer);
        server.close();
        if (e) for (const s of joined.values()) s.destroy();
        e ? reject(e) : resolve(joined);
      };
    });
    sockets.catch(() => {}); // read through `done` or by the session's caller
    const done = sockets.then(() => {});
    done.catch(() => {}); // a session's caller reads `sockets`
    const timer = setTimeout(() => {
      const missing = Array.from({ length: nnodes - 1 }, (_, i) => i + 1).filter((r) => !joined.has(r));
      finish(new PeregrineError('PGN_ERR_ENGINE_DEAD', `rendezvous on ${host}:${port}: node(s) ${missing.join(', ')} of ${nnodes} did not join within ${timeoutMs} ms`, { missing, nnodes }));
    }, timeoutMs);
    server.on('connection', (socket) => {
      socket.on('error', () => {});
      readBytes(socket, HELLO_BYTES).then((hello) => {
        const why = checkHello(hello, nnodes, joined);
        if (why) return refuse(socket, why);
        joined.set(hello.readUInt32LE(4), socket);
        if (joined.size < nnodes - 1) return;
        const reply = frame([STATUS_OK], id);
        for (const s of joined.values()) keepOpen ? s.write(reply) : s.end(reply);
        finish();
      }, () => socket.destroy());
    });
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(addr.port, host, resolve);
      });
    } catch (e) {
      finish();
      throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `cannot listen on ${host}:${addr.port}: ${(e as Error).message}`, { host, port: addr.port }, { cause: e });
    }
    port = (server.address() as { port: number }).port;
    if (nnodes <= 1) finish();
    return { server: new RendezvousServer(server, port, done), sockets };
  }

  close(): void {
    this.server.close();
  }
}

/**
 * Node `nodeRank` (>= 1): connects to node 0 (retrying until it listens) and returns the id.
 * @throws PeregrineError PGN_ERR_INVALID_ARGUMENT when node 0 refuses (wrong nnodes, rank taken),
 *   PGN_ERR_ENGINE_DEAD when no id arrives within the timeout
 */
export async function joinRendezvous(addr: RendezvousAddress, nodeRank: number): Promise<Uint8Array> {
  const { id, socket } = await joinRendezvousSession(addr, nodeRank);
  socket.destroy();
  return id;
}

/** As joinRendezvous, but the connection to node 0 stays open (its timeout off) for the session's messages. */
export async function joinRendezvousSession(addr: RendezvousAddress, nodeRank: number): Promise<{ id: Uint8Array; socket: Socket }> {
  const timeoutMs = addr.timeoutMs ?? DEFAULT_RENDEZVOUS_TIMEOUT_MS;
  const deadline = Date.now() + timeoutMs;
  const where = `${addr.host}:${addr.port}`;
  let lastError = 'no answer';
  let kept: Socket | null = null;
  while (Date.now() < deadline) {
    const socket = connect({ host: addr.host, port: addr.port });
    try {
      socket.setTimeout(Math.max(1, deadline - Date.now()), () => socket.destroy(new Error('timed out')));
      await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject); });
      socket.write(frame([MAGIC, nodeRank, addr.nnodes]));
      const status = (await readBytes(socket, 4)).readUInt32LE(0);
      if (status === STATUS_OK) {
        const id = new Uint8Array(await readBytes(socket, 128));
        socket.setTimeout(0);
        kept = socket;
        return { id, socket };
      }
      const reason = (await readBytes(socket, (await readBytes(socket, 4)).readUInt32LE(0))).toString('utf8');
      throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `rendezvous at ${where} refused node ${nodeRank}: ${reason}`, { nodeRank, reason });
    } catch (e) {
      if (e instanceof PeregrineError) throw e;
      lastError = (e as Error).message;
      await new Promise((resolve) => setTimeout(resolve, Math.min(RETRY_MS, Math.max(0, deadline - Date.now()))));
    } finally {
      if (kept !== socket) socket.destroy();
    }
  }
  throw new PeregrineError('PGN_ERR_ENGINE_DEAD', `node ${nodeRank} got no NCCL id from the rendezvous at ${where} within ${timeoutMs} ms (${lastError})`, { nodeRank, host: addr.host, port: addr.port });
}

function checkHello(hello: Buffer, nnodes: number, joined: Map<number, Socket>): string | null {
  if (hello.readUInt32LE(0) !== MAGIC) return 'not a Peregrine rendezvous hello';
  const rank = hello.readUInt32LE(4), theirs = hello.readUInt32LE(8);
  if (theirs !== nnodes) return `node ${rank} was started with --nnodes ${theirs}, node 0 with ${nnodes}`;
  if (rank < 1 || rank >= nnodes) return `--node-rank ${rank} is outside 1..${nnodes - 1}`;
  if (joined.has(rank)) return `--node-rank ${rank} has already joined`;
  return null;
}

function refuse(socket: Socket, why: string): void {
  const text = new TextEncoder().encode(why);
  socket.end(frame([STATUS_REFUSED, text.length], text));
}

/** little-endian u32 words, then `tail` */
function frame(words: readonly number[], tail: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(4 * words.length + tail.length);
  const view = new DataView(out.buffer);
  words.forEach((w, i) => view.setUint32(4 * i, w >>> 0, true));
  out.set(tail, 4 * words.length);
  return out;
}

/** The next `n` bytes of the socket; rejects if it closes first. Unread bytes stay queued. */
function readBytes(socket: Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const tryRead = () => {
      const chunk = socket.read(n) as Buffer | null;
      if (chunk === null) return;
      cleanup();
      if (chunk.length < n) reject(new Error(`connection closed after ${chunk.length} of ${n} bytes`));
      else resolve(chunk);
    };
    const onEnd = () => { cleanup(); reject(new Error(`connection closed before ${n} bytes arrived`)); };
    const cleanup = () => { socket.off('readable', tryRead); socket.off('end', onEnd); socket.off('close', onEnd); socket.off('error', onEnd); };
    socket.on('readable', tryRead);
    socket.on('end', onEnd);
    socket.on('close', onEnd);
    socket.on('error', onEnd);
    tryRead();
  });
}
