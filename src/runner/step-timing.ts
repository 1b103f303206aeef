/**
 * Where the device's time goes, step by step: busy from a step's start mark (before its inputs
 * are written) to its end mark (after its last copy), idle from one step's end to the next
 * one's start. With async scheduling the next step is queued before the current one ends, so
 * the idle time is what the host failed to hide (issue 4's target: < 5% at batch 256).
 *
 * On a backend with events (CUDA) the marks are timing events and the times are the device's
 * own clock; elsewhere (the CPU runs a step's work while it is queued) they are host times.
 * Steps are settled in the order they were marked.
 */
import type { Backend } from '../backends/backend.js';

/** a pause between steps longer than this is an idle engine, not step overhead */
export const MAX_COUNTED_GAP_MS = 50;

/** 'decode': one new token per sequence; 'prefill': the step carries prompt tokens (with or without decodes) */
export type StepKind = 'decode' | 'prefill';

export function stepKindOf(fb: { readonly numTokens: number; readonly numSeqs: number }): StepKind {
  return fb.numTokens === fb.numSeqs ? 'decode' : 'prefill';
}

/** Steps of one kind: how many, and the device's mean busy time in one. */
export interface StepKindTiming {
  numSteps: number;
  meanBusyMs: number;
}

export interface StepTiming {
  numSteps: number;
  /** the steps by kind (busy time only: the gaps belong to no one step) */
  decode: StepKindTiming;
  prefill: StepKindTiming;
  /** busy + idle per step */
  meanStepMs: number;
  /** device idle per step: the host's work between steps that no queued step covered */
  meanHostGapMs: number;
  /** idle / (busy + idle) */
  hostGapFraction: number;
}

/** Cumulative step counts and device times (ms). */
export interface StepTotals {
  numSteps: number;
  /** device busy running steps */
  busyMs: number;
  /** device idle between steps (gaps up to MAX_COUNTED_GAP_MS; longer ones are an idle engine) */
  idleMs: number;
}

/** What a CUDA backend offers: events on its stream. */
interface EventBackend extends Backend {
  readonly stream: unknown;
  createEvent(opts: { timing?: boolean }): DeviceEvent;
}

export interface DeviceEvent {
  record(stream: never): void;
  query(): boolean;
  synchronize(): void;
  elapsedMsSince(start: DeviceEvent): number;
  destroy(): void;
}

/** One step's marks: host times, or events of the device. */
export interface StepMark {
  startMs: number;
  endMs: number;
  kind: StepKind;
  start: DeviceEvent | null;
  end: DeviceEvent | null;
}

export class StepTimer {
  private readonly events: EventBackend | null;
  private readonly pool: DeviceEvent[] = [];
  /** marked steps not yet settled, oldest first */
  private readonly unsettled: StepMark[] = [];
  /** the last settled step's end */
  private lastEndMs = 0;
  private lastEnd: DeviceEvent | null = null;
  private readonly totals = { numSteps: 0, idleMs: 0, busyMs: 0 };
  private readonly byKind: Record<StepKind, { numSteps: number; busyMs: number }> = { decode: { numSteps: 0, busyMs: 0 }, prefill: { numSteps: 0, busyMs: 0 } };
  /** the same since creation, never reset (the server's counters) */
  private readonly lifetime = { numSteps: 0, idleMs: 0, busyMs: 0 };

  constructor(backend: Backend) {
    this.events = 'createEvent' in backend && 'stream' in backend ? (backend as EventBackend) : null;
  }

  /** Marks a step's start: call before its inputs are written. */
  begin(kind: StepKind = 'decode'): StepMark {
    this.settleDone();
    const mark: StepMark = { startMs: performance.now(), endMs: 0, kind, start: this.take(), end: null };
    mark.start?.record(this.events!.stream as never);
    return mark;
  }

  /** Marks the step's end: call once its last device work is queued (on the CPU: done). */
  end(mark: StepMark): void {
    mark.endMs = performance.now();
    mark.end = this.take();
    mark.end?.record(this.events!.stream as never);
    this.unsettled.push(mark);
  }

  /** Whether the device has run the step up to its end mark. */
  isDone(mark: StepMark): boolean {
    return mark.end === null || mark.end.query();
  }

  /** Resolves once the device has run the step, polling so that the event loop stays free. */
  async wait(mark: StepMark): Promise<void> {
    while (!this.isDone(mark)) await new Promise((resolve) => setImmediate(resolve));
  }

  /** Totals since creation of the steps the device has finished, without waiting for the others. */
  lifetimeTotals(): StepTotals {
    this.settleDone();
    return { ...this.lifetime };
  }

  /** Totals since the last reset; steps still running on the device are waited for. */
  summary(reset = false): StepTiming {
    for (const m of this.unsettled) m.end?.synchronize();
    this.settleDone();
    const t = this.totals;
    const total = t.idleMs + t.busyMs;
    const kind = (k: StepKind): StepKindTiming => ({ numSteps: this.byKind[k].numSteps, meanBusyMs: this.byKind[k].numSteps ? this.byKind[k].busyMs / this.byKind[k].numSteps : 0 });
    const r = {
      numSteps: t.numSteps, decode: kind('decode'), prefill: kind('prefill'),
      meanStepMs: t.numSteps ? total / t.numSteps : 0, meanHostGapMs: t.numSteps ? t.idleMs / t.numSteps : 0, hostGapFraction: total ? t.idleMs / total : 0,
    };
    if (reset) {
      Object.assign(t, { numSteps: 0, idleMs: 0, busyMs: 0 });
      for (const k of Object.values(this.byKind)) Object.assign(k, { numSteps: 0, busyMs: 0 });
      this.lastEndMs = 0;
      this.release(this.lastEnd);
      this.lastEnd = null;
    }
    return r;
  }

  dispose(): void {
    for (const m of this.unsettled) {
      m.start?.destroy();
      m.end?.destroy();
    }
    this.unsettled.length = 0;
    this.lastEnd?.destroy();
    this.lastEnd = null;
    for (const e of this.pool) e.destroy();
    this.pool.length = 0;
  }

  /** Adds the finished steps at the head of the queue to the totals. */
  private settleDone(): void {
    while (this.unsettled.length > 0 && this.isDone(this.unsettled[0]!)) {
      const m = this.unsettled.shift()!;
      let busy = m.endMs - m.startMs;
      let gap = this.lastEndMs > 0 ? m.startMs - this.lastEndMs : Infinity;
      if (m.start && m.end) {
        busy = m.end.elapsedMsSince(m.start);
        gap = this.lastEnd ? m.start.elapsedMsSince(this.lastEnd) : Infinity;
      }
      for (const t of [this.totals, this.lifetime]) {
        t.busyMs += Math.max(0, busy);
        if (gap < MAX_COUNTED_GAP_MS) t.idleMs += Math.max(0, gap);
        t.numSteps++;
      }
      this.byKind[m.kind].numSteps++;
      this.byKind[m.kind].busyMs += Math.max(0, busy);
      this.release(m.start);
      this.release(this.lastEnd);
      this.lastEnd = m.end;
      this.lastEndMs = m.endMs;
    }
  }

  private take(): DeviceEvent | null {
    if (!this.events) return null;
    return this.pool.pop() ?? this.events.createEvent({ timing: true });
  }

  private release(e: DeviceEvent | null): void {
    if (e) this.pool.push(e);
  }
}
