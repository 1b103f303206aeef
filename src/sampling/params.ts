/**
 * Sampling parameters of one request, with vLLM's defaults and range checks.
 * The OpenAI-compatible server maps request fields (snake_case) onto these; errors name
 * the snake_case field so a client sees the name it sent.
 */
import { PeregrineError } from '../errors.js';

export interface SamplingParams {
  /** number of completions to return for the prompt */
  n: number;
  maxTokens: number;
  /** eos and stop token ids are masked, and no stop condition but length applies, until this many outputs exist */
  minTokens: number;
  /** 0 (below SAMPLING_EPS) = greedy */
  temperature: number;
  topP: number;
  /** -1 or 0 = off */
  topK: number;
  minP: number;
  repetitionPenalty: number;
  presencePenalty: number;
  frequencyPenalty: number;
  /** null = a fresh random seed per request */
  seed: number | null;
  stop: string[];
  stopTokenIds: number[];
  ignoreEos: boolean;
  includeStopStrInOutput: boolean;
  /** top-n alternatives per output token; 0 = only the chosen token's logprob; null = none */
  logprobs: number | null;
  promptLogprobs: number | null;
  skipSpecialTokens: boolean;
}

export type SamplingParamsInit = Partial<SamplingParams>;

export const DEFAULT_MAX_TOKENS = 16;
/** temperatures below this sample greedily (vLLM's _SAMPLING_EPS) */
export const SAMPLING_EPS = 1e-5;
/** OpenAI's range for presence and frequency penalties */
export const MAX_ABS_PENALTY = 2;

const DEFAULTS: SamplingParams = {
  n: 1,
  maxTokens: DEFAULT_MAX_TOKENS,
  minTokens: 0,
  temperature: 1,
  topP: 1,
  topK: 0,
  minP: 0,
  repetitionPenalty: 1,
  presencePenalty: 0,
  frequencyPenalty: 0,
  seed: null,
  stop: [],
  stopTokenIds: [],
  ignoreEos: false,
  includeStopStrInOutput: false,
  logprobs: null,
  promptLogprobs: null,
  skipSpecialTokens: true,
};

export function isGreedy(params: SamplingParams): boolean {
  return params.temperature < SAMPLING_EPS;
}

/**
 * Fill defaults and validate ranges (vLLM's rules).
 *
 * @param init fields to set; the rest take vLLM's defaults (temperature 1, top_p 1, top_k off,
 *   max_tokens {@link DEFAULT_MAX_TOKENS}, ...). Arrays are copied.
 * @throws PeregrineError `PGN_ERR_INVALID_ARGUMENT` with `details.param` the snake_case field name
 *   (`top_p`, `max_tokens`, ...) and `details.value` the rejected value.
 * @example makeSamplingParams({ temperature: 0.7, topP: 0.9, stop: ['\n\n'] })
 */
export function makeSamplingParams(init: SamplingParamsInit = {}): SamplingParams {
  const defined = Object.fromEntries(Object.entries(init).filter(([, v]) => v !== undefined));
  const p: SamplingParams = { ...DEFAULTS, ...defined };

  checkInt(p.n, 'n', 1);
  checkInt(p.maxTokens, 'max_tokens', 1);
  checkInt(p.minTokens, 'min_tokens', 0);
  if (p.minTokens > p.maxTokens) {
    fail('min_tokens', p.minTokens, `must be less than or equal to max_tokens=${p.maxTokens}`);
  }
  checkNumber(p.temperature, 'temperature');
  if (p.temperature < 0) fail('temperature', p.temperature, 'must be non-negative');
  checkNumber(p.topP, 'top_p');
  if (!(p.topP > 0 && p.topP <= 1)) fail('top_p', p.topP, 'must be in (0, 1]');
  checkInt(p.topK, 'top_k', -1);
  checkNumber(p.minP, 'min_p');
  if (!(p.minP >= 0 && p.minP <= 1)) fail('min_p', p.minP, 'must be in [0, 1]');
  checkNumber(p.repetitionPenalty, 'repetition_penalty');
  if (!(p.repetitionPenalty > 0)) fail('repetition_penalty', p.repetitionPenalty, 'must be greater than zero');
  for (const [value, param] of [[p.presencePenalty, 'presence_penalty'], [p.frequencyPenalty, 'frequency_penalty']] as const) {
    checkNumber(value, param);
    if (Math.abs(value) > MAX_ABS_PENALTY) fail(param, value, `must be in [-${MAX_ABS_PENALTY}, ${MAX_ABS_PENALTY}]`);
  }
  if (p.seed !== null) checkInt(p.seed, 'seed', Number.MIN_SAFE_INTEGER);
  if (!Array.isArray(p.stop)) fail('stop', p.stop, 'must be a list of strings');
  for (const s of p.stop) {
    if (typeof s !== 'string' || s.length === 0) fail('stop', s, 'must contain only non-empty strings');
  }
  if (!Array.isArray(p.stopTokenIds)) fail('stop_token_ids', p.stopTokenIds, 'must be a list of token ids');
  for (const id of p.stopTokenIds) checkInt(id, 'stop_token_ids', 0);
  checkBool(p.ignoreEos, 'ignore_eos');
  checkBool(p.includeStopStrInOutput, 'include_stop_str_in_output');
  checkBool(p.skipSpecialTokens, 'skip_special_tokens');
  if (p.logprobs !== null) checkInt(p.logprobs, 'logprobs', 0);
  if (p.promptLogprobs !== null) checkInt(p.promptLogprobs, 'prompt_logprobs', 0);

  p.stop = [...p.stop];
  p.stopTokenIds = [...p.stopTokenIds];
  if (p.topK < 0) p.topK = 0;
  if (isGreedy(p)) {
    // as vLLM: the filters cannot change an argmax, so greedy requests carry none
    p.topP = 1;
    p.topK = 0;
    p.minP = 0;
  }
  return p;
}

function fail(param: string, value: unknown, rule: string): never {
  throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `${param} ${rule}, got ${JSON.stringify(value) ?? String(value)}`, {
    param,
    value,
  });
}

function checkNumber(value: unknown, param: string): asserts value is number {
  if (typeof value !== 'number' || !Number.isFinite(value)) fail(param, value, 'must be a finite number');
}

function checkInt(value: unknown, param: string, min: number): asserts value is number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) fail(param, value, 'must be an integer');
  if (value < min) fail(param, value, min === -1 ? 'must be -1 or 0 (off) or at least 1' : `must be at least ${min}`);
}

function checkBool(value: unknown, param: string): void {
  if (typeof value !== 'boolean') fail(param, value, 'must be a boolean');
}
