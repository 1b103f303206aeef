/**
 * Driving a ModelRunner step by step in tests, as the engine would: every sequence's unprocessed tokens each
 * step (the whole prompt first, then one token), synchronously through execute, or through launch / collect
 * with the newest token of each sequence in flight as a placeholder (async scheduling).
 */
import type { Sequence } from '../../src/engine/sequence.js';
import type { ModelRunner } from '../../src/runner/model-runner.js';

/** One step's entries: the tokens of each sequence not yet in the KV cache. */
export function entriesOf(seqs: readonly Sequence[]): Array<{ seq: Sequence; numNewTokens: number }> {
  return seqs.map((seq) => ({ seq, numNewTokens: seq.numTokens - seq.numCachedTokens }));
}

/** `steps` steps through execute, each sampled token appended. */
export async function executeSteps(runner: ModelRunner, seqs: readonly Sequence[], steps: number): Promise<void> {
  for (let s = 0; s < steps; s++) {
    const entries = entriesOf(seqs);
    const results = await runner.execute({ entries });
    entries.forEach(({ seq, numNewTokens }, i) => {
      seq.numCachedTokens += numNewTokens;
      seq.appendToken(results[i]!.tokenId);
    });
  }
}

/**
 * `steps` steps through launch: step n+1 is launched before step n's samples are collected, its newest
 * tokens placeholders; `afterLaunch(s)` runs once step s is launched and step s - 1 collected.
 */
export async function launchSteps(runner: ModelRunner, seqs: readonly Sequence[], steps: number, afterLaunch: (s: number) => void = () => {}): Promise<void> {
  type Inflight = { entries: ReturnType<typeof entriesOf>; collect: () => Promise<ReadonlyArray<{ tokenId: number } | null>> };
  const collect = async (step: Inflight) => {
    const results = await step.collect();
    step.entries.forEach(({ seq }, i) => seq.fillPlaceholder(results[i]!.tokenId));
  };
  let inflight: Inflight | null = null;
  for (let s = 0; s < steps; s++) {
    const entries = entriesOf(seqs);
    const launched = await runner.launch({ entries });
    entries.forEach(({ seq, numNewTokens }, i) => {
      seq.numCachedTokens += numNewTokens;
      seq.appendPlaceholder(i);
    });
    if (inflight) await collect(inflight);
    inflight = { entries, collect: launched.collect };
    afterLaunch(s);
  }
  if (inflight) await collect(inflight);
}
