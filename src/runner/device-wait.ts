/**
 * Waiting for queued device work without blocking the event loop, with a deadline: a tensor-parallel
 * step whose collective waits for a rank that is alive but no longer answering (NCCL has no
 * timeout of its own) ends in a typed error instead of a hang.
 */
import { PeregrineError } from '../errors.js';
import { DEFAULT_COLLECTIVE_TIMEOUT_MS } from '../parallel/cpu-communicator.js';

/** PEREGRINE_STEP_TIMEOUT_S, else the CPU communicator's collective timeout (10 minutes) */
export function stepTimeoutMs(env: NodeJS.ProcessEnv = process.env): number {
  const s = Number(env.PEREGRINE_STEP_TIMEOUT_S);
  return Number.isFinite(s) && s > 0 ? s * 1000 : DEFAULT_COLLECTIVE_TIMEOUT_MS;
}

/**
 * Polls `isDone` once per event-loop turn until it returns true.
 * @throws PeregrineError PGN_ERR_ENGINE_DEAD once `timeoutMs` have passed (`what` names the wait)
 */
export async function pollUntilDone(isDone: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!isDone()) {
    if (performance.now() > deadline) {
      throw new PeregrineError('PGN_ERR_ENGINE_DEAD', `${what} did not finish within ${(timeoutMs / 1000).toFixed(0)} s: a rank stopped answering (PEREGRINE_STEP_TIMEOUT_S sets the limit)`, { timeoutMs });
    }
    await new Promise((resolve) => setImmediate(resolve));
  }
}
