/** POST /v1/completions: the request schema, prompts tokenized and checked against the context. */
import type { SamplingParamsInit } from '../../sampling/params.js';
import type { ServerContext } from '../context.js';
import { ApiError, invalidParam, unsupported } from '../errors.js';
import { optBool, optInt, required, type Body } from './fields.js';
import { finalizeParams, MAX_LOGPROBS, parseSamplingRequest, resolveMaxTokens, type SamplingRequest } from './sampling-request.js';

/** OpenAI's default max_tokens for legacy completions. */
export const DEFAULT_COMPLETION_MAX_TOKENS = 16;

export interface CompletionPrompt {
  /** the prompt's text (decoded for token-id prompts; '' without a tokenizer) */
  readonly text: string;
  readonly tokenIds: number[];
}

export interface CompletionRequest {
  readonly sampling: SamplingRequest;
  readonly prompts: CompletionPrompt[];
  readonly echo: boolean;
  /** top alternatives per token; null = no logprobs */
  readonly logprobs: number | null;
  /** vLLM's `prompt_logprobs`: top alternatives per prompt position, returned on each choice; null = not asked */
  readonly promptLogprobs: number | null;
  /** the engine's params: promptLogprobs set where prompt_logprobs, or echo with logprobs, asks */
  readonly params: SamplingParamsInit;
}

type RawPrompt = string | number[];

function rawPrompts(body: Body): RawPrompt[] {
  const p = required(body.prompt ?? undefined, 'prompt');
  const isIds = (x: unknown): x is number[] => Array.isArray(x) && x.length > 0 && x.every((id) => Number.isSafeInteger(id));
  if (typeof p === 'string') return [p];
  if (isIds(p)) return [p];
  if (Array.isArray(p) && p.length > 0 && p.every((x) => typeof x === 'string')) return p as string[];
  if (Array.isArray(p) && p.length > 0 && p.every(isIds)) return p as number[][];
  throw invalidParam('prompt', "'prompt' must be a string, a list of strings, a list of token ids or a list of token-id lists (none empty)");
}

function encode(ctx: ServerContext, raw: RawPrompt): CompletionPrompt {
  const { tokenizer } = ctx;
  const vocabSize = ctx.engine.info.vocabSize;
  if (typeof raw !== 'string') {
    const bad = raw.find((id) => id < 0 || id >= vocabSize);
    if (bad !== undefined) throw invalidParam('prompt', `token id ${bad} is outside the vocabulary [0, ${vocabSize})`);
    return { text: tokenizer ? tokenizer.decode(raw, { skipSpecialTokens: false }) : '', tokenIds: raw };
  }
  if (!tokenizer) throw new ApiError(400, 'tokenizer_missing', 'this model has no tokenizer: send the prompt as token ids', 'prompt');
  const tokenIds = tokenizer.encode(raw);
  if (tokenIds.length === 0) throw invalidParam('prompt', 'the prompt is empty');
  return { text: raw, tokenIds };
}

/**
 * Parses, tokenizes and checks a completion request.
 * @throws ApiError 400 naming the field; 400 context_length_exceeded.
 */
export function parseCompletionRequest(ctx: ServerContext, body: Body): CompletionRequest {
  const sampling = parseSamplingRequest(body, ['max_tokens']);
  if (body.suffix !== undefined && body.suffix !== null) throw unsupported('suffix', "'suffix' is not supported");
  const echo = optBool(body, 'echo') ?? false;
  const logprobs = optInt(body, 'logprobs', 0, MAX_LOGPROBS) ?? null;
  const promptLogprobs = optInt(body, 'prompt_logprobs', 0, MAX_LOGPROBS) ?? null;
  // as vLLM: a stream has no place for them (its chunks carry output tokens only)
  if (promptLogprobs !== null && sampling.stream) throw unsupported('prompt_logprobs', "'prompt_logprobs' is not available when 'stream' is true");
  const prompts = rawPrompts(body).map((p) => encode(ctx, p));
  let maxTokens = DEFAULT_COMPLETION_MAX_TOKENS;
  for (const p of prompts) maxTokens = resolveMaxTokens(sampling, p.tokenIds.length, ctx.engine.info.maxModelLen, 'prompt', DEFAULT_COMPLETION_MAX_TOKENS);
  const params = finalizeParams(sampling, maxTokens, logprobs);
  // echo with logprobs scores the prompt too (vLLM: prompt_logprobs, else logprobs when echoing)
  const scored = promptLogprobs ?? (echo ? logprobs : null);
  return { sampling, prompts, echo, logprobs, promptLogprobs, params: scored !== null ? { ...params, promptLogprobs: scored } : params };
}
