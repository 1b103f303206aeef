/**
 * A timing proxy over a Backend: every op that launches work is timed and charged to a row
 * of the profile, with the least bytes it must move. Linears are named by their weight
 * (qkv_proj, o_proj, gate_up_proj, down_proj, lm_head, ...); the other ops by kind
 * (attention, norm, rope + kv write, activation, embedding, ...).
 *
 * On CUDA each call gets an event pair on the backend's stream (read back in `collect`); on
 * the CPU, whose ops are synchronous, performance.now() around the call. Event times are the
 * op's own only while the device runs ahead of the host: queue work first (see
 * decode-profile.ts), otherwise the host's launch time shows up between the events.
 *
 * ```ts
 * const prof = new OpProfiler(backend, linearNames(weights, spec));
 * model = new DecoderModel(spec, prof.backend, weights, limits); // every op of it is timed
 * model.forward(...);
 * const rows = await prof.collect();
 * ```
 */
import type { Backend, QuantizedWeight, Tensor } from '../backends/backend.js';
import { opBytes } from './op-bytes.js';
import type { ModelWeights } from '../models/model-weights.js';
import type { ModelSpec } from '../models/spec.js';

/** One row of a profile: an op kind (or a linear by weight name) over the calls of a run. */
export interface OpRow {
  readonly op: string;
  readonly calls: number;
  readonly ms: number;
  /** least bytes the calls move through memory: weights + activations for linears, K and V read (+ q, out) for attention */
  readonly bytes: number;
  /** the row's calls alone, replayed as one CUDA graph (set by decode-profile.ts; absent without graphs) */
  readonly graphMs?: number;
}

/** A linear the profiler saw: its shape and the weights of that name (for the cuBLASLt reference). */
export interface LinearShape {
  readonly op: string;
  readonly M: number;
  readonly N: number;
  readonly K: number;
  readonly outDtype: Tensor['dtype'];
  readonly weights: Array<Tensor | QuantizedWeight>;
}

/** Backend methods that launch work, and the row each is charged to (linear: by weight name). */
const OP_ROWS: Readonly<Record<string, string>> = {
  linear: 'linear', fusedLinear: 'linear', attention: 'attention', ropeWriteKv: 'rope + kv write',
  rmsNorm: 'norm', rmsNormFp8: 'norm', layerNorm: 'norm', qkRmsNorm: 'norm',
  siluMul: 'activation', siluMulFp8: 'activation', geluMul: 'activation', gelu: 'activation', relu: 'activation',
  embedding: 'embedding', embeddingShard: 'embedding', gatherRows: 'gather rows',
  add: 'elementwise', copy: 'elementwise', scale: 'elementwise', softcap: 'elementwise', clamp: 'elementwise',
  moeRoute: 'moe', moeExperts: 'moe',
};

/** fused ops that return false, having queued nothing, where the backend does not fuse them */
const DECLINABLE: ReadonlySet<string> = new Set(['fusedLinear', 'rmsNormFp8', 'siluMulFp8']);

/** weight object -> Hugging Face module name of the linear it feeds */
export function linearNames(w: ModelWeights, spec: ModelSpec): Map<object, string> {
  const names = new Map<object, string>();
  const put = (t: object | null | undefined, name: string) => { if (t) names.set(t, name); };
  for (const l of w.layers) {
    put(l.qkv, 'qkv_proj');
    put(l.o, 'o_proj');
    if (!spec.moe) {
      put(l.up, spec.gatedMlp ? 'gate_up_proj' : 'up_proj');
      put(l.down, 'down_proj');
    }
    put(l.router, 'router');
  }
  put(w.projectIn, 'project_in');
  put(w.projectOut, 'project_out');
  put(w.lmHead, 'lm_head');
  return names;
}

export interface TimingEvent {
  record(stream: never): void;
  synchronize(): void;
  elapsedMsSince(start: TimingEvent): number;
  destroy(): void;
}
/** What a CUDA backend offers for timing: events on its stream. */
export interface EventBackend extends Backend {
  readonly stream: unknown;
  createEvent(opts: { timing?: boolean }): TimingEvent;
}
export function hasEvents(b: Backend): b is EventBackend {
  return 'createEvent' in b && 'stream' in b;
}

interface Call {
  readonly op: string;
  readonly bytes: number;
  /** the call again, untimed */
  readonly run: () => unknown;
  ms?: number;
  start?: TimingEvent;
  end?: TimingEvent;
}

export class OpProfiler {
  /** the backend to run the model on: `target` with its ops timed while `enabled` */
  readonly backend: Backend;
  enabled = true;
  /** host-side context lengths of the step's sequences (attention's KV bytes); set by the caller */
  contextLens: ArrayLike<number> = [];
  readonly #target: Backend;
  readonly #names: Map<object, string>;
  readonly #events: EventBackend | null;
  readonly #pool: TimingEvent[] = [];
  #calls: Call[] = [];
  /** the calls of the last collected run, by row */
  #lastRun = new Map<string, Array<() => unknown>>();
  readonly #linears = new Map<string, LinearShape>();

  constructor(target: Backend, names: Map<object, string> = new Map()) {
    this.#target = target;
    this.#names = names;
    this.#events = hasEvents(target) ? target : null;
    this.backend = new Proxy(target, {
      get: (t, prop) => {
        const v = Reflect.get(t, prop, t) as unknown;
        if (typeof v !== 'function') return v;
        const fn = (v as (...a: unknown[]) => unknown).bind(t); // CudaBackend's #private fields need `this` = the target
        if (typeof prop !== 'string' || !(prop in OP_ROWS)) return fn;
        return (...args: unknown[]) => (this.enabled ? this.#timed(prop, args, fn) : fn(...args));
      },
    });
  }

  /** The linears seen so far (shape of the last call per name, every distinct weight of it). */
  get linears(): readonly LinearShape[] {
    return [...this.#linears.values()];
  }

  /**
   * Issues the calls of row `op` from the last collected run again, on the target backend and
   * untimed: the same kernels on the same tensors (e.g. captured into a graph, to time the row alone).
   */
  replay(op: string): void {
    for (const run of this.#lastRun.get(op) ?? []) run();
  }

  /** Waits for the device, returns the calls since the last collect as rows (first-seen order) and forgets them. */
  async collect(): Promise<OpRow[]> {
    const calls = this.#calls;
    this.#calls = [];
    this.#lastRun = new Map();
    for (const c of calls) {
      const runs = this.#lastRun.get(c.op);
      if (runs) runs.push(c.run);
      else this.#lastRun.set(c.op, [c.run]);
    }
    const last = calls.at(-1);
    last?.end?.synchronize();
    const rows = new Map<string, { op: string; calls: number; ms: number; bytes: number }>();
    for (const c of calls) {
      const ms = c.ms ?? c.end!.elapsedMsSince(c.start!);
      if (c.start) this.#pool.push(c.start, c.end!);
      const r = rows.get(c.op) ?? { op: c.op, calls: 0, ms: 0, bytes: 0 };
      r.calls++;
      r.ms += ms;
      r.bytes += c.bytes;
      rows.set(c.op, r);
    }
    return [...rows.values()];
  }

  dispose(): void {
    for (const c of this.#calls) { c.start?.destroy(); c.end?.destroy(); }
    for (const e of this.#pool) e.destroy();
    this.#calls = [];
    this.#lastRun.clear();
    this.#pool.length = 0;
  }

  #timed(method: string, args: unknown[], fn: (...a: unknown[]) => unknown): unknown {
    const op = method === 'linear' ? this.#linearRow(args) : OP_ROWS[method]!;
    const bytes = opBytes(method, args, this.contextLens);
    const run = () => fn(...args);
    const ev = this.#events;
    if (!ev) {
      const t0 = performance.now();
      const out = fn(...args);
      if (out !== false || !DECLINABLE.has(method)) this.#calls.push({ op, bytes, run, ms: performance.now() - t0 });
      return out;
    }
    const start = this.#pool.pop() ?? ev.createEvent({ timing: true });
    const end = this.#pool.pop() ?? ev.createEvent({ timing: true });
    start.record(ev.stream as never);
    const out = fn(...args);
    end.record(ev.stream as never);
    if (out === false && DECLINABLE.has(method)) this.#pool.push(start, end); // nothing ran: the caller runs the unfused ops
    else this.#calls.push({ op, bytes, run, start, end });
    return out;
  }

  #linearRow(args: unknown[]): string {
    const [out, , w, , numTokens] = args as [Tensor, Tensor, Tensor | QuantizedWeight, Tensor | null, number];
    const op = this.#names.get(w) ?? 'linear (other)';
    const [N, K] = w.shape as [number, number];
    const seen = this.#linears.get(op);
    const shape: LinearShape = { op, M: numTokens, N, K, outDtype: out.dtype, weights: seen?.weights ?? [] };
    if (!shape.weights.includes(w)) shape.weights.push(w);
    this.#linears.set(op, shape);
    return op;
  }
}
