/**
 * Device timing for the profiler: event pairs around queued work, behind a delay of device
 * copies so that the host's launch cost stays out of them, and graph replays. On a backend
 * without events (the CPU) the wall time of the work is taken instead.
 */
import { bytesPerElement, type Backend, type Tensor } from '../backends/backend.js';
import { PeregrineError } from '../errors.js';
import { canCaptureGraphs } from '../runner/decode-graphs.js';
import { hasEvents, type EventBackend, type OpProfiler, type OpRow } from './op-profiler.js';
import { median } from './stats.js';

/** runs of each measurement (the median is kept) */
export const TIMING_RUNS = 7;
/** elements of each buffer of the device delay (2 x 128 MiB) */
const DELAY_ELEMS = 64 * 2 ** 20;
const DELAY_DTYPE = 'bf16';
/** copies queued back to back per timing of the copy bandwidth (the host's first launch gap spread over them) */
const COPIES_PER_TIMING = 5;

/**
 * Device copies queued ahead of timed work, so the host can queue all of it before the device
 * gets there. Sized by `setMs` from the measured host time of the work.
 */
export class DeviceDelay {
  readonly #src: Tensor;
  readonly #dst: Tensor;
  #copyMs = 0;
  #numCopies = 0;

  constructor(readonly b: EventBackend) {
    this.#src = b.empty([DELAY_ELEMS], DELAY_DTYPE);
    this.#dst = b.empty([DELAY_ELEMS], DELAY_DTYPE);
  }

  /** Times copies of the delay's buffers (back to back, median of TIMING_RUNS) and returns the copy bandwidth, bytes read + written. */
  async measureTBs(): Promise<number> {
    const copy = () => this.b.copy(this.#dst, this.#src, 1);
    copy();
    const copies = () => { for (let i = 0; i < COPIES_PER_TIMING; i++) copy(); };
    this.#copyMs = Math.max(median(await repeat(() => eventMs(this.b, copies))) / COPIES_PER_TIMING, 1e-3);
    return (2 * DELAY_ELEMS * bytesPerElement(DELAY_DTYPE)) / (this.#copyMs / 1000) / 1e12;
  }

  /** Whether measureTBs has timed the copies (setMs needs it). */
  get measured(): boolean {
    return this.#copyMs > 0;
  }

  /** Sizes the delay to `ms` of device time (after measureTBs). */
  setMs(ms: number): void {
    if (!this.measured) throw new PeregrineError('PGN_ERR_INTERNAL', 'DeviceDelay.setMs before measureTBs: the copy time is unknown');
    this.#numCopies = Math.ceil(ms / this.#copyMs);
  }

  queue(): void {
    for (let i = 0; i < this.#numCopies; i++) this.b.copy(this.#dst, this.#src, 1);
  }

  dispose(): void {
    this.b.free(this.#src);
    this.b.free(this.#dst);
  }
}

/** Device ms of the work `fn` queues, behind the delay (CPU: wall ms). */
export async function timed(b: Backend, delay: DeviceDelay | null, fn: () => void): Promise<number> {
  if (!delay || !hasEvents(b)) return hostMs(b, fn);
  delay.queue();
  return eventMs(b, fn);
}

export async function eventMs(b: EventBackend, fn: () => void): Promise<number> {
  const start = b.createEvent({ timing: true }), end = b.createEvent({ timing: true });
  try {
    start.record(b.stream as never);
    fn();
    end.record(b.stream as never);
    end.synchronize();
    return end.elapsedMsSince(start);
  } finally {
    start.destroy();
    end.destroy();
  }
}

/** Wall ms of `fn` and the device work it queues. */
export async function hostMs(b: Backend, fn: () => void): Promise<number> {
  await b.synchronize();
  const t0 = performance.now();
  fn();
  await b.synchronize();
  return performance.now() - t0;
}

/** Device ms of one replay of `fn`'s work captured as a CUDA graph (median of TIMING_RUNS). */
export async function graphReplayMs(b: Backend, delay: DeviceDelay | null, fn: () => void): Promise<number> {
  if (!canCaptureGraphs(b)) throw new PeregrineError('PGN_ERR_INTERNAL', `the ${b.device} backend cannot capture graphs`);
  b.beginCapture();
  let graph: { dispose(): void };
  try {
    fn();
  } finally {
    graph = b.endCapture();
  }
  try {
    b.replay(graph);
    return median(await repeat(() => timed(b, delay, () => b.replay(graph))));
  } finally {
    graph.dispose();
  }
}

export async function repeat(fn: () => Promise<number>): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < TIMING_RUNS; i++) out.push(await fn());
  return out;
}


/** eager runs of a profiled step (its rows are their medians) */
const PROFILE_RUNS = 3;
/** queue this many times the host's enqueue time of the step as delay */
const DELAY_MARGIN = 1.5;

/**
 * Runs `forward` PROFILE_RUNS + 1 times with `prof` timing its ops (an eager step): the first run, with no
 * delay yet, sizes the device delay (DELAY_MARGIN x its enqueue time) queued before each later run, so the
 * host's launch cost stays out of the event times. Returns the later runs' op rows and spans.
 */
export async function profiledRuns(b: Backend, prof: OpProfiler, delay: DeviceDelay | null, forward: () => void): Promise<{ runs: OpRow[][]; spans: number[] }> {
  const runs: OpRow[][] = [];
  const spans: number[] = [];
  if (delay && !delay.measured) await delay.measureTBs(); // the prefill profile does not report it, but the delay needs it
  for (let i = 0; i <= PROFILE_RUNS; i++) {
    prof.enabled = true;
    const t0 = performance.now();
    const span = await timed(b, delay, forward);
    const enqueueMs = performance.now() - t0;
    prof.enabled = false;
    const ops = await prof.collect();
    if (i === 0) delay?.setMs(DELAY_MARGIN * enqueueMs);
    else { runs.push(ops); spans.push(span); }
  }
  return { runs, spans };
}
