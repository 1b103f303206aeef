/**
 * Perplexity of a model on a text: the text's ids (with the tokenizer's BOS) split into
 * consecutive non-overlapping windows of `window` tokens (a shorter tail is dropped), each
 * scored on its own; nll = mean over windows and positions of -log p(next token).
 * The same procedure as tools/demo-model/train.py, so the numbers compare.
 */
import type { ModelRunner } from '../runner/model-runner.js';
import { buildForwardBatch } from '../runner/input-builder.js';

export interface PerplexityResult {
  readonly numWindows: number;
  readonly numPredicted: number;
  readonly nll: number;
  readonly ppl: number;
  /** summed NLL of each window */
  readonly windowNllSums: number[];
}

function logSoftmaxAt(row: Float32Array, target: number): number {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i]! > max) max = row[i]!;
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i]! - max);
  return row[target]! - max - Math.log(sum);
}

/**
 * Needs a runner with maxModelLen >= window, maxNumBatchedTokens >= window, maxNumLogits >= window and blocks for one window.
 * @param collectLogits receives each window's logits ([window - 1, vocab], f32), e.g. to compare formats row by row
 */
export async function computePerplexity(runner: ModelRunner, ids: readonly number[], window: number, maxWindows = Infinity, collectLogits?: Float32Array[]): Promise<PerplexityResult> {
  const bs = runner.blockSize;
  const V = runner.spec.vocabSize;
  const numWindows = Math.min(Math.floor(ids.length / window), maxWindows);
  const blockTable = Array.from({ length: Math.ceil(window / bs) }, (_, j) => j);
  const windowNllSums: number[] = [];
  for (let w = 0; w < numWindows; w++) {
    const tokenIds = ids.slice(w * window, (w + 1) * window);
    const fb = buildForwardBatch([{ seq: { tokenIds, numCachedTokens: 0, blockTable }, numNewTokens: window }], bs, runner.maxBlocksPerSeq);
    const logits = await runner.forward({ ...fb, logitsIndices: Int32Array.from({ length: window - 1 }, (_, i) => i) });
    collectLogits?.push(logits.slice(0, (window - 1) * V));
    let sum = 0;
    for (let p = 0; p < window - 1; p++) sum -= logSoftmaxAt(logits.subarray(p * V, (p + 1) * V), tokenIds[p + 1]!);
    windowNllSums.push(sum);
  }
  const numPredicted = numWindows * (window - 1);
  const nll = windowNllSums.reduce((a, b) => a + b, 0) / numPredicted;
  return { numWindows, numPredicted, nll, ppl: Math.exp(nll), windowNllSums };
}
