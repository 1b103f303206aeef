/**
 * The request fields completions and chat share: model, stream, n and the sampling fields
 * (OpenAI's and the common extensions top_k, min_p, repetition_penalty, ignore_eos,
 * stop_token_ids, min_tokens, include_stop_str_in_output, skip_special_tokens,
 * return_tokens_as_token_ids).
 * Only the fields the client set reach the engine, so the model's generation_config
 * supplies the rest, as in vLLM.
 */
import { makeSamplingParams, type SamplingParamsInit } from '../../sampling/params.js';
import { contextLengthExceeded, toApiError, unsupported } from '../errors.js';
import { optBool, optInt, optIntList, optNumber, optObject, optString, optStringList, type Body } from './fields.js';

/** Most completions per prompt. */
export const MAX_N = 128;
/** Most alternatives per token in logprobs (OpenAI's limit for chat, vLLM's default max_logprobs). */
export const MAX_LOGPROBS = 20;

export interface SamplingRequest {
  readonly model: string | undefined;
  readonly stream: boolean;
  readonly includeUsage: boolean;
  readonly n: number;
  /** max_tokens / max_completion_tokens as sent (undefined: the route's default) */
  readonly maxTokens: number | undefined;
  readonly maxTokensParam: string;
  /** logprobs name tokens `token_id:<id>` (vLLM's return_tokens_as_token_ids) */
  readonly tokensAsIds: boolean;
  readonly params: SamplingParamsInit;
}

/** Reads and type-checks the shared fields. `maxTokensFields` in order of preference. */
export function parseSamplingRequest(body: Body, maxTokensFields: readonly string[]): SamplingRequest {
  const stream = optBool(body, 'stream') ?? false;
  const streamOptions = optObject(body, 'stream_options');
  if (streamOptions && !stream) throw unsupported('stream_options', "'stream_options' is only allowed when 'stream' is true");
  const includeUsage = streamOptions ? optBool(streamOptions, 'include_usage') ?? false : false;
  const n = optInt(body, 'n', 1, MAX_N) ?? 1;
  const bestOf = optInt(body, 'best_of', 1);
  if (bestOf !== undefined && bestOf !== n) throw unsupported('best_of', "'best_of' is not supported (only best_of = n)");
  const logitBias = optObject(body, 'logit_bias');
  if (logitBias && Object.keys(logitBias).length > 0) throw unsupported('logit_bias', "'logit_bias' is not supported");

  const maxTokensParam = maxTokensFields.find((f) => body[f] !== undefined && body[f] !== null) ?? maxTokensFields[0]!;
  const maxTokens = optInt(body, maxTokensParam, 1);
  const stop = optStringList(body, 'stop');
  const params: SamplingParamsInit = {
    n,
    temperature: optNumber(body, 'temperature'),
    topP: optNumber(body, 'top_p'),
    topK: optInt(body, 'top_k'),
    minP: optNumber(body, 'min_p'),
    seed: optInt(body, 'seed'),
    presencePenalty: optNumber(body, 'presence_penalty'),
    frequencyPenalty: optNumber(body, 'frequency_penalty'),
    repetitionPenalty: optNumber(body, 'repetition_penalty'),
    stop: stop?.filter((s) => s.length > 0),
    stopTokenIds: optIntList(body, 'stop_token_ids'),
    ignoreEos: optBool(body, 'ignore_eos'),
    minTokens: optInt(body, 'min_tokens', 0),
    includeStopStrInOutput: optBool(body, 'include_stop_str_in_output'),
    skipSpecialTokens: optBool(body, 'skip_special_tokens'),
  };
  return {
    model: optString(body, 'model'),
    stream,
    includeUsage,
    n,
    maxTokens,
    maxTokensParam,
    tokensAsIds: optBool(body, 'return_tokens_as_token_ids') ?? false,
    params: Object.fromEntries(Object.entries(params).filter(([, v]) => v !== undefined)),
  };
}

/**
 * The max_tokens to run with, checked against the context.
 * @param fallback when the client sent none: a number, or 'rest' (all the context the prompt leaves)
 * @throws ApiError 400 context_length_exceeded when the prompt leaves no room, or max_tokens does not fit.
 */
export function resolveMaxTokens(
  req: SamplingRequest,
  promptLen: number,
  maxModelLen: number,
  promptParam: string,
  fallback: number | 'rest',
): number {
  if (promptLen >= maxModelLen) {
    throw contextLengthExceeded(promptParam,
      `this model's maximum context length is ${maxModelLen} tokens, but the ${promptParam} has ${promptLen} tokens: reduce its length`);
  }
  if (req.maxTokens !== undefined && promptLen + req.maxTokens > maxModelLen) {
    throw contextLengthExceeded(req.maxTokensParam,
      `'${req.maxTokensParam}' is too large: ${req.maxTokens}. This model's maximum context length is ${maxModelLen} tokens and the ${promptParam} has ${promptLen} tokens (${req.maxTokens} > ${maxModelLen} - ${promptLen})`);
  }
  return req.maxTokens ?? (fallback === 'rest' ? maxModelLen - promptLen : fallback);
}

/**
 * The engine's sampling fields, validated now (so a bad value is a 400 before anything is queued).
 * @throws ApiError 400 naming the field.
 */
export function finalizeParams(req: SamplingRequest, maxTokens: number, logprobs: number | null): SamplingParamsInit {
  const params: SamplingParamsInit = { ...req.params, maxTokens, ...(logprobs !== null && { logprobs }) };
  try {
    makeSamplingParams(params);
  } catch (e) {
    throw toApiError(e);
  }
  return params;
}
