/**
 * Messages over one TCP connection between nodes: each a u32 little-endian byte length, then
 * v8.serialize of the message (typed arrays of a ForwardBatch travel as such, as over a forked
 * worker's 'advanced' IPC). Reads stay in paused mode (socket.read), so bytes queued by an
 * earlier reader of the same socket (the rendezvous) are the first frame's.
 */
import type { Socket } from 'node:net';
import { deserialize, serialize } from 'node:v8';
import { PeregrineError } from '../errors.js';

const HEADER_BYTES = 4;
/** a ForwardBatch is far smaller; a longer prefix means the peer does not speak this protocol */
export const MAX_FRAME_BYTES = 1 << 30;
/** how often an idle connection is probed, so a node that vanishes (power, network) is noticed */
const KEEPALIVE_MS = 10_000;

export class FramedSocket<In, Out> {
  private readonly listeners: ((m: In) => void)[] = [];
  /** frames that arrived before the first listener */
  private readonly pending: In[] = [];
  private readonly closeListeners: ((why: string) => void)[] = [];
  private buffered: Uint8Array[] = [];
  private numBufferedBytes = 0;
  private closedWhy: string | null = null;

  /** @param peer who is at the other end, for messages ("node 1 (10.0.0.2:41234)") */
  constructor(private readonly socket: Socket, readonly peer: string) {
    socket.setNoDelay(true);
    socket.setKeepAlive(true, KEEPALIVE_MS);
    socket.setTimeout(0);
    socket.on('readable', () => this.drain());
    socket.on('error', (e) => this.closed(`${e.message}`));
    socket.on('close', () => this.closed('connection closed'));
    socket.on('end', () => this.closed('connection closed by the peer'));
    queueMicrotask(() => this.drain()); // bytes already queued before this reader
  }

  /** why the connection is gone, or null while open */
  get closedReason(): string | null {
    return this.closedWhy;
  }

  onMessage(fn: (m: In) => void): void {
    this.listeners.push(fn);
    for (const m of this.pending.splice(0)) fn(m);
  }

  /** Runs once, when the connection ends for any reason (`why`); at once if it already has. */
  onClose(fn: (why: string) => void): void {
    if (this.closedWhy !== null) fn(this.closedWhy);
    else this.closeListeners.push(fn);
  }

  /** Resolves once `m` is handed to the OS; a closed connection drops it (its onClose has run or will). */
  send(m: Out): Promise<void> {
    if (this.closedWhy !== null || this.socket.destroyed) return Promise.resolve();
    return new Promise((resolve) => this.socket.write(encodeFrame(m), () => resolve()));
  }

  /** Flushes what was sent, then ends the connection. */
  end(): void {
    this.socket.end();
  }

  /** Ends the connection at once. */
  destroy(): void {
    this.socket.destroy();
  }

  private drain(): void {
    for (let chunk: Uint8Array | null; (chunk = this.socket.read() as Uint8Array | null) !== null;) {
      this.buffered.push(chunk);
      this.numBufferedBytes += chunk.length;
    }
    if (this.numBufferedBytes < HEADER_BYTES) return;
    let all = this.buffered.length === 1 ? this.buffered[0]! : concat(this.buffered, this.numBufferedBytes);
    const view = new DataView(all.buffer, all.byteOffset, all.byteLength);
    let offset = 0;
    const frames: In[] = [];
    while (all.length - offset >= HEADER_BYTES) {
      const n = view.getUint32(offset, true);
      if (n > MAX_FRAME_BYTES) {
        this.socket.destroy(new Error(`${this.peer} sent a frame of ${n} bytes (at most ${MAX_FRAME_BYTES}): not a Peregrine node`));
        return;
      }
      if (all.length - offset - HEADER_BYTES < n) break;
      frames.push(deserialize(all.subarray(offset + HEADER_BYTES, offset + HEADER_BYTES + n)) as In);
      offset += HEADER_BYTES + n;
    }
    all = all.subarray(offset);
    this.buffered = all.length > 0 ? [all] : [];
    this.numBufferedBytes = all.length;
    if (this.listeners.length === 0) this.pending.push(...frames);
    else for (const m of frames) for (const fn of this.listeners) fn(m);
  }

  private closed(why: string): void {
    if (this.closedWhy !== null) return;
    this.closedWhy = why;
    this.socket.destroy();
    for (const fn of this.closeListeners.splice(0)) fn(why);
  }
}

/** One frame: u32 LE length + v8.serialize(m). */
export function encodeFrame(m: unknown): Uint8Array {
  const body = serialize(m);
  if (body.length > MAX_FRAME_BYTES) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `a message of ${body.length} bytes is over the ${MAX_FRAME_BYTES}-byte frame limit between nodes`, { numBytes: body.length });
  const out = new Uint8Array(HEADER_BYTES + body.length);
  new DataView(out.buffer).setUint32(0, body.length, true);
  out.set(body, HEADER_BYTES);
  return out;
}

function concat(parts: readonly Uint8Array[], numBytes: number): Uint8Array {
  const out = new Uint8Array(numBytes);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
