/** Peregrine's public library API. */
export { LLM, type LLMOptions, type Prompt } from './api/llm.js';
export type { RequestOutput, CompletionOutput, StreamDelta, OutputLogprob, TokenLogprob } from './api/outputs.js';
export { makeSamplingParams, type SamplingParams, type SamplingParamsInit } from './sampling/index.js';
export type { ChatMessage } from './tokenizer/chat-template.js';
export { PeregrineError, isPeregrineError, type ErrorCode } from './errors.js';
export type { ModelSpec } from './models/spec.js';
export { supportedArchitectures } from './models/registry.js';
export type { PromptLogprob } from './sampling/prompt-logprobs.js';
export { startServer, type RunningServer, type ServerOptions } from './server/start-server.js';
export { buildQuantizedCheckpoint, type BuildOptions } from './weights/quant/build.js';
