/** Messages between rank 0 (the TpGroup) and the other ranks' workers (tp-worker.ts). */
import type { DeviceName } from '../backends/index.js';
import type { ForwardBatch } from '../runner/forward-batch.js';
import type { CpuCommShared } from './cpu-communicator.js';
import type { RunnerConfig } from '../runner/model-runner.js';
import type { HfConfig } from '../models/config.js';
import type { RandomQuantization } from '../bench/random-weights.js';

/** Where every rank's weights come from: a checkpoint folder, or random weights of a config's shape (benchmarks). */
export type ModelSource =
  | { readonly kind: 'dir'; readonly dir: string }
  /** each rank makes its own shard (bench/random-weights.ts): no checkpoint, no full-model copy */
  | { readonly kind: 'random'; readonly config: HfConfig; readonly seed: number; readonly quantization: RandomQuantization };

export type TpCommInit =
  /** worker threads of one process over shared memory */
  | { readonly kind: 'cpu'; readonly shared: CpuCommShared; readonly timeoutMs: number }
  /** one process per GPU; the 128-byte ncclUniqueId made by rank 0 */
  | { readonly kind: 'nccl'; readonly uniqueId: readonly number[] };

export interface TpWorkerInit {
  readonly model: ModelSource;
  readonly tp: number;
  readonly rank: number;
  readonly device: DeviceName;
  readonly deviceId: number;
  readonly comm: TpCommInit;
  /**
   * fault injection for tests: the worker exits with code 1 when step `exitAtStep` (0-based) arrives;
   * -1: when told to join the communicator, before it does
   */
  readonly exitAtStep?: number;
}

/**
 * init -> the worker loads its shard and answers 'loaded'; connect -> it joins the
 * communicator (a collective for NCCL), makes its runner with rank 0's config (KV blocks
 * sized once rank 0's shard is loaded) and answers 'ready'; then one 'step' per forward;
 * 'stop' frees everything and ends the worker.
 */
export type ToWorker =
  | { readonly t: 'init'; readonly init: TpWorkerInit }
  | { readonly t: 'connect'; readonly runner: RunnerConfig }
  | { readonly t: 'step'; readonly fb: ForwardBatch }
  | { readonly t: 'stop' };

export type FromWorker =
  | { readonly t: 'loaded' }
  | { readonly t: 'ready' }
  | { readonly t: 'error'; readonly code: string; readonly message: string };
