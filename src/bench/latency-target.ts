/**
 * What `runLatency` drives: one device's runner, or a tensor-parallel group timed through rank 0
 * (rank 0's forward ends with the logits all-gather, so its stream finishing means every rank's
 * part of the step is done). Both take the runner's own batches.
 */
import { bytesPerElement, numel, type Backend, type Tensor } from '../backends/backend.js';
import type { ExecuteResults } from '../engine/executor.js';
import type { LLM } from '../api/llm.js';
import { allTensors, type ModelWeights } from '../models/model-weights.js';
import type { ModelSpec } from '../models/spec.js';
import { TpGroup } from '../parallel/tp-group.js';
import type { ForwardBatch } from '../runner/forward-batch.js';
import type { RunnerConfig, RunnerEntry } from '../runner/model-runner.js';

export interface LatencyTarget {
  /** the whole model's spec */
  readonly spec: ModelSpec;
  /** rank 0's backend with tp > 1 */
  readonly backend: Backend;
  readonly config: RunnerConfig;
  readonly blockSize: number;
  readonly numBlocks: number;
  readonly maxBlocksPerSeq: number;
  readonly tp: number;
  /** bytes of weights one GPU reads per decode step: its shard, LM head included, the embedding lookup not */
  readonly weightBytesPerGpu: number;
  execute(batch: { readonly entries: readonly RunnerEntry[] }): Promise<ExecuteResults>;
  forward(fb: ForwardBatch): Promise<Float32Array>;
}

function stepWeightBytes(w: ModelWeights): number {
  const bytes = (ts: readonly Tensor[]) => ts.reduce((n, t) => n + numel(t.shape) * bytesPerElement(t.dtype), 0);
  return bytes(allTensors(w)) - (w.embedTokens !== w.lmHead ? bytes([w.embedTokens]) : 0);
}

export function latencyTarget(llm: LLM): LatencyTarget {
  const ex = llm.executor;
  if (ex instanceof TpGroup) {
    return {
      spec: ex.spec, backend: ex.backend, config: ex.config, blockSize: ex.blockSize, numBlocks: ex.numBlocks, maxBlocksPerSeq: ex.maxBlocksPerSeq,
      tp: ex.tp, weightBytesPerGpu: stepWeightBytes(ex.rankWeights),
      execute: (b) => ex.execute(b), forward: (fb) => ex.forward(fb),
    };
  }
  return {
    spec: ex.spec, backend: ex.backend, config: ex.config, blockSize: ex.blockSize, numBlocks: ex.numBlocks, maxBlocksPerSeq: ex.maxBlocksPerSeq,
    tp: 1, weightBytesPerGpu: stepWeightBytes(ex.weights),
    execute: (b) => ex.execute(b), forward: (fb) => ex.forward(fb),
  };
}
