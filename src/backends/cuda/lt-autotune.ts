/**
 * cuBLASLt algorithm autotuning: the heuristic ranks algorithms by a model of the GPU; for some shapes (the
 * M = 1 GEMVs of decode, N = K = 4096 at large M) its first is not the fastest on the card. With
 * PEREGRINE_GEMM_AUTOTUNE=1 a plan is made with the heuristic's first AUTOTUNE_CANDIDATES results, and on its first
 * matmul outside a stream capture each is timed on the real operands (one warm-up, then AUTOTUNE_REPS runs between
 * two events); the fastest stays in use. The matmuls write `out` with beta = 0, so the runs leave nothing behind
 * but the result the caller's own matmul writes next. Only for decode-sized and power-of-two M (the decode graph
 * buckets), so that prefill chunks of every length do not each stop the stream to tune.
 */
import type { Driver } from './driver.js';
import type { LtPlan, LtPlans } from './lt-plans.js';
import { CudaEvent, type CudaStream } from './stream.js';

const AUTOTUNE_CANDIDATES = 8;
const AUTOTUNE_REPS = 3;
const AUTOTUNE_MAX_M = 8192;

/** Whether plans for M rows are tuned (PEREGRINE_GEMM_AUTOTUNE=1, read each call). */
export function autotuneWanted(M: number): boolean {
  if (process.env.PEREGRINE_GEMM_AUTOTUNE !== '1') return false;
  return M <= 8 || (M <= AUTOTUNE_MAX_M && (M & (M - 1)) === 0);
}

/** The heuristic results a new plan for M rows keeps (LtPlans.makePlan's `candidates`): several where it is tuned. */
export const autotuneCandidates = (M: number): number => (autotuneWanted(M) ? AUTOTUNE_CANDIDATES : 1);

/** Tunes a plan made with several candidates on its first matmul outside a stream capture (autotunePlan); else nothing. */
export function autotuneOnFirstUse(lt: LtPlans, plan: LtPlan, drv: Driver, stream: CudaStream, run: () => number): void {
  if (!plan.tuned && plan.candidates.count > 1 && !stream.isCapturing) autotunePlan(lt, plan, drv, stream, run);
}

/**
 * Times the plan's candidates with `run` (one matmul with the candidate in use; answers cuBLASLt's status) and
 * keeps the fastest in use; the stream is synchronized. Candidates that cuBLASLt refuses are skipped; when every
 * one is, the heuristic's first stays. Answers the milliseconds of a run for each candidate (Infinity: refused).
 */
export function autotunePlan(lt: LtPlans, plan: LtPlan, drv: Driver, stream: CudaStream, run: () => number): number[] {
  const n = plan.candidates.count;
  const marks = Array.from({ length: n }, () => [new CudaEvent(drv), new CudaEvent(drv)] as const);
  const ok: boolean[] = [];
  try {
    for (let i = 0; i < n; i++) {
      lt.useCandidate(plan, i);
      ok[i] = run() === 0;
      if (!ok[i]) continue;
      marks[i]![0].record(stream);
      for (let r = 0; r < AUTOTUNE_REPS && ok[i]; r++) ok[i] = run() === 0;
      marks[i]![1].record(stream);
    }
    stream.synchronize();
    const ms = marks.map(([start, end], i) => (ok[i] ? end.elapsedMsSince(start) / AUTOTUNE_REPS : Infinity));
    let best = 0;
    for (let i = 1; i < n; i++) if (ms[i]! < ms[best]!) best = i;
    lt.useCandidate(plan, best);
    plan.tuned = true;
    return ms;
  } finally {
    for (const [a, b] of marks) {
      a.destroy();
      b.destroy();
    }
  }
}
