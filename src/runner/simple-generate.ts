/**
 * The plain "model + simple loop" path, gpt-fast style: no scheduler, no prefix
 * cache. Every prompt gets its own contiguous run of KV blocks, one batched prefill,
 * then batched decode steps until each sequence has `maxTokens` tokens or hits EOS.
 * It is the parity harness the batching engine is tested against.
 */
import { PeregrineError } from '../errors.js';
import { createSamplingState, makeSamplingParams, sampleRow, type SamplingParamsInit, type SampleResult } from '../sampling/index.js';
import { buildForwardBatch, type BatchSeq } from './input-builder.js';
import type { ModelRunner } from './model-runner.js';

export interface SimpleGenerateResult {
  readonly tokenIds: number[][];
  /** the logits row that chose each generated token, when `keepLogits` */
  readonly stepLogits: Float32Array[][] | null;
}

export async function simpleGenerate(
  runner: ModelRunner,
  prompts: readonly (readonly number[])[],
  init: SamplingParamsInit & { keepLogits?: boolean } = {},
): Promise<SimpleGenerateResult> {
  const { keepLogits = false, ...paramsInit } = init;
  const params = makeSamplingParams(paramsInit);
  const bs = runner.blockSize;
  let nextBlock = 0;
  const seqs = prompts.map((p) => {
    const total = p.length + params.maxTokens;
    if (total > runner.maxModelLen) throw new PeregrineError('PGN_ERR_PROMPT_TOO_LONG', `prompt of ${p.length} + ${params.maxTokens} tokens exceeds the context of ${runner.maxModelLen}`);
    const n = Math.ceil(total / bs);
    const blockTable = Array.from({ length: n }, (_, j) => nextBlock + j);
    nextBlock += n;
    const output: number[] = [];
    // the state reads `output` live, so penalties see every token generated so far
    return { tokenIds: [...p], numCachedTokens: 0, blockTable, output, done: false, state: createSamplingState(params, p, output, 0, runner.eosTokenIds) };
  });
  if (nextBlock > runner.numBlocks) throw new PeregrineError('PGN_ERR_KV_CACHE_EXHAUSTED', `simpleGenerate needs ${nextBlock} KV blocks, the pool has ${runner.numBlocks}`);
  const stepLogits: Float32Array[][] | null = keepLogits ? seqs.map(() => []) : null;
  const eos = new Set(params.ignoreEos ? [] : runner.eosTokenIds);
  const V = runner.spec.vocabSize;

  while (seqs.some((s) => !s.done)) {
    const live = seqs.filter((s) => !s.done);
    const entries = live.map((s) => ({ seq: s as BatchSeq, numNewTokens: s.tokenIds.length - s.numCachedTokens }));
    const logits = await runner.forward(buildForwardBatch(entries, bs, runner.maxBlocksPerSeq));
    live.forEach((s, r) => {
      const row = logits.subarray(r * V, (r + 1) * V);
      const res: SampleResult = sampleRow(row, s.state);
      s.numCachedTokens = s.tokenIds.length;
      s.tokenIds.push(res.tokenId);
      s.output.push(res.tokenId);
      stepLogits?.[seqs.indexOf(s)]!.push(row.slice());
      if (s.output.length >= params.maxTokens || eos.has(res.tokenId)) s.done = true;
    });
  }
  return { tokenIds: seqs.map((s) => s.output), stepLogits };
}
