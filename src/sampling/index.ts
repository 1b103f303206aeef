export { DEFAULT_MAX_TOKENS, MAX_ABS_PENALTY, SAMPLING_EPS, isGreedy, makeSamplingParams } from './params.js';
export type { SamplingParams, SamplingParamsInit } from './params.js';
export { Rng, philox4x32 } from './rng.js';
export { computeLogprobs, createSamplingState, logSumExp, sampleRow } from './sampler.js';
export type { SampleResult, SequenceSamplingState, TokenLogprob } from './sampler.js';
export { selectTopK } from './select.js';
export { computePromptLogprobs, numPromptLogprobRows } from './prompt-logprobs.js';
export type { PromptLogprob } from './prompt-logprobs.js';
