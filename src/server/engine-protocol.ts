/**
 * Messages between the HTTP thread (engine-client.ts) and the engine worker (engine-worker.ts).
 * Everything is structured-clone data: errors travel as {@link WireError}.
 */
import type { LLMOptions } from '../api/llm.js';
import type { KvCacheDType } from '../backends/backend.js';
import type { HfConfig } from '../models/config.js';
import type { StreamDelta } from '../api/outputs.js';
import type { ErrorCode } from '../errors.js';
import type { SamplingParamsInit } from '../sampling/params.js';

/** The worker's `workerData`. */
export interface EngineWorkerData {
  readonly modelDir: string;
  /** benchmarks: a model of this config with random weights instead of modelDir's checkpoint */
  readonly randomWeights?: HfConfig;
  /** LLM.load options (no callbacks: they cannot cross threads) */
  readonly options: Omit<LLMOptions, 'onLoadProgress'>;
}

/** What the HTTP side needs to know about the loaded model. */
export interface EngineInfo {
  readonly maxModelLen: number;
  readonly vocabSize: number;
  readonly numKvBlocks: number;
  readonly blockSize: number;
  readonly architecture: string;
  /** what the KV cache stores: 'auto' (the activation dtype) or 'fp8' */
  readonly kvCacheDtype?: KvCacheDType;
}

/** Engine counters as the server reports them (one place maps the engine's stats onto these). */
export interface EngineStats {
  readonly numRunning: number;
  readonly numWaiting: number;
  readonly numBlocks: number;
  /** blocks held by live sequences */
  readonly numUsedBlocks: number;
  /** unreferenced blocks kept for prefix reuse */
  readonly numCachedBlocks: number;
  readonly numFreeBlocks: number;
  /** prompt tokens found in the prefix cache / prompt tokens looked up, since start */
  readonly prefixCacheHitRate: number;
  readonly numPreemptions: number;
  /** engine steps and the device's busy / idle time in them (ms) since start; null where not measured (tensor parallel) */
  readonly steps: { readonly numSteps: number; readonly busyMs: number; readonly idleMs: number } | null;
}

export interface WireError {
  readonly code: ErrorCode | 'UNKNOWN';
  readonly message: string;
  readonly details: Record<string, unknown>;
}

export type ToWorker =
  | { t: 'add'; id: string; promptTokenIds: number[]; params: SamplingParamsInit }
  | { t: 'abort'; id: string }
  | { t: 'stats'; seq: number }
  | { t: 'close' };

export type FromWorker =
  | { t: 'ready'; info: EngineInfo }
  | { t: 'load-error'; error: WireError }
  | { t: 'accepted'; id: string }
  | { t: 'delta'; id: string; delta: StreamDelta }
  | { t: 'end'; id: string }
  | { t: 'error'; id: string; error: WireError }
  | { t: 'stats'; seq: number; stats: EngineStats }
  /** the engine cannot go on; the worker exits after sending this */
  | { t: 'fatal'; error: WireError }
  | { t: 'closed' };

/** The worker sends its messages in batches (one postMessage per turn of its event loop). */
export type WorkerBatch = FromWorker[];
