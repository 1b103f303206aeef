/**
 * Server-sent events for streamed completions: `data: <json>\n\n` per chunk, `data: [DONE]` last.
 * Writes wait for the socket to drain (or close), so a slow reader holds its own stream back
 * instead of growing the server's buffers.
 */
import type { ServerResponse } from 'node:http';
import { toApiError } from './errors.js';

export class SseWriter {
  private closed = false;

  constructor(private readonly res: ServerResponse) {
    res.once('close', () => (this.closed = true));
  }

  /** Sends the 200 and the event-stream headers. */
  open(): void {
    this.res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-cache',
      Connection: 'keep-alive',
      'X-Accel-Buffering': 'no',
    });
    this.res.flushHeaders();
  }

  /** true once the client went away */
  get isClosed(): boolean {
    return this.closed || this.res.destroyed;
  }

  /** One `data:` event with `value` as JSON. Resolves once the socket can take more. */
  send(value: unknown): Promise<void> {
    return this.write(`data: ${JSON.stringify(value)}\n\n`);
  }

  /** `data: [DONE]` and the end of the response. */
  done(): void {
    if (this.isClosed) return;
    this.res.end('data: [DONE]\n\n');
  }

  private write(text: string): Promise<void> {
    if (this.isClosed) return Promise.resolve();
    if (this.res.write(text)) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.res.off('drain', done);
        this.res.off('close', done);
        resolve();
      };
      this.res.on('drain', done);
      this.res.on('close', done);
    });
  }
}

/**
 * Opens the event stream, runs `produce`, then ends with `data: [DONE]`. An error after the
 * headers went out is sent as one `data: {"error": {...}}` event before [DONE] (as vLLM does).
 */
export async function runEventStream(res: ServerResponse, produce: (sse: SseWriter) => Promise<void>): Promise<void> {
  const sse = new SseWriter(res);
  sse.open();
  try {
    await produce(sse);
  } catch (e) {
    await sse.send(toApiError(e).toJSON());
  }
  sse.done();
}
