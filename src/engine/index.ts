export { Sequence, type SequenceInit, type SequenceStatus } from './sequence.js';
export { Scheduler, type SchedulerConfig, type ScheduledBatch, type ScheduledEntry } from './scheduler.js';
export { placeholderRow, placeholderToken, type ExecuteResults, type LaunchedStep, type ModelExecutor } from './executor.js';
export { StopChecker, type FinishReason, type StopDecision } from './stop-checker.js';
export {
  LLMEngine,
  DEFAULT_MAX_NUM_BATCHED_TOKENS,
  DEFAULT_MAX_NUM_SEQS,
  type AddRequestInit,
  type EngineStats,
  type LLMEngineOptions,
  type RequestOutput,
} from './llm-engine.js';
export { BlockManager, DEFAULT_BLOCK_SIZE, type BlockManagerOptions, type BlockSequence } from '../kvcache/block-manager.js';
