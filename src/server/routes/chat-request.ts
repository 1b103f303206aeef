/** POST /v1/chat/completions: the request schema, messages rendered with the model's chat template. */
import { PeregrineError } from '../../errors.js';
import type { SamplingParamsInit } from '../../sampling/params.js';
import { applyChatTemplate, type ChatMessage } from '../../tokenizer/chat-template.js';
import type { ServerContext } from '../context.js';
import { ApiError, invalidParam, toApiError, unsupported } from '../errors.js';
import { optBool, optInt, optObject, required, type Body } from './fields.js';
import { finalizeParams, MAX_LOGPROBS, parseSamplingRequest, resolveMaxTokens, type SamplingRequest } from './sampling-request.js';

export interface ChatRequest {
  readonly sampling: SamplingRequest;
  readonly promptTokenIds: number[];
  /** top alternatives per token; null = no logprobs */
  readonly logprobs: number | null;
  readonly params: SamplingParamsInit;
}

function parseMessages(body: Body): ChatMessage[] {
  const raw = required(body.messages ?? undefined, 'messages');
  if (!Array.isArray(raw) || raw.length === 0) throw invalidParam('messages', "'messages' must be a non-empty list of messages");
  return raw.map((m: unknown, i): ChatMessage => {
    const at = `messages[${i}]`;
    if (m === null || typeof m !== 'object' || Array.isArray(m)) throw invalidParam(at, `'${at}' must be an object`);
    const { role, content, name } = m as Record<string, unknown>;
    if (typeof role !== 'string' || role === '') throw invalidParam(`${at}.role`, `'${at}.role' must be a non-empty string`);
    if (name !== undefined && typeof name !== 'string') throw invalidParam(`${at}.name`, `'${at}.name' must be a string`);
    const msg = { role, ...(name !== undefined && { name: name as string }) };
    if (content === null || content === undefined || typeof content === 'string') return { ...msg, content: content ?? null };
    if (!Array.isArray(content)) throw invalidParam(`${at}.content`, `'${at}.content' must be a string or a list of content parts`);
    const parts = content.map((p: unknown, j) => {
      const pat = `${at}.content[${j}]`;
      const part = p as Record<string, unknown> | null;
      if (part?.type !== 'text') throw unsupported(`${pat}.type`, `'${pat}.type' is ${JSON.stringify(part?.type)}: only text content parts are supported`);
      if (typeof part.text !== 'string') throw invalidParam(`${pat}.text`, `'${pat}.text' must be a string`);
      return { type: 'text' as const, text: part.text };
    });
    return { ...msg, content: parts };
  });
}

function checkUnsupported(body: Body): void {
  const tools = body.tools;
  if (Array.isArray(tools) && tools.length > 0 && body.tool_choice !== 'none') throw unsupported('tools', "'tools' is not supported");
  const format = optObject(body, 'response_format');
  if (format && format.type !== 'text') throw unsupported('response_format', `response_format ${JSON.stringify(format.type)} is not supported (only "text")`);
}

/**
 * Parses a chat request and renders its prompt.
 * @throws ApiError 400 naming the field; 400 chat_template_error / tokenizer_missing; 400 context_length_exceeded.
 */
export function parseChatRequest(ctx: ServerContext, body: Body): ChatRequest {
  const sampling = parseSamplingRequest(body, ['max_completion_tokens', 'max_tokens']);
  checkUnsupported(body);
  const wantLogprobs = optBool(body, 'logprobs') ?? false;
  const topLogprobs = optInt(body, 'top_logprobs', 0, MAX_LOGPROBS);
  if (topLogprobs !== undefined && !wantLogprobs) throw invalidParam('top_logprobs', "'top_logprobs' needs 'logprobs' set to true");
  const logprobs = wantLogprobs ? topLogprobs ?? 0 : null;
  const messages = parseMessages(body);
  const kwargs = optObject(body, 'chat_template_kwargs');
  if (!ctx.tokenizer) throw new ApiError(400, 'tokenizer_missing', 'this model has no tokenizer, so it has no chat template: use /v1/completions with token ids', 'messages');
  let promptTokenIds: number[];
  try {
    promptTokenIds = applyChatTemplate(ctx.tokenizer, messages, {
      addGenerationPrompt: optBool(body, 'add_generation_prompt') ?? true,
      extra: kwargs,
    }).tokenIds;
  } catch (e) {
    const err = toApiError(e);
    if (e instanceof PeregrineError) throw new ApiError(err.status, err.code, err.message, err.param ?? 'messages');
    throw err;
  }
  if (promptTokenIds.length === 0) throw invalidParam('messages', 'the chat template rendered an empty prompt');
  const maxTokens = resolveMaxTokens(sampling, promptTokenIds.length, ctx.engine.info.maxModelLen, 'messages', 'rest');
  return { sampling, promptTokenIds, logprobs, params: finalizeParams(sampling, maxTokens, logprobs) };
}
