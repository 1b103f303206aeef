/**
 * Every error the server answers with, in OpenAI's shape:
 * `{"error": {"message", "type", "param", "code"}}`. `code` is OpenAI's code where OpenAI has
 * one (`context_length_exceeded`, `invalid_api_key`, `model_not_found`), else a stable
 * snake_case name from the table below; clients match `code`, never the message.
 */
import type { ServerResponse } from 'node:http';
import { PeregrineError, type ErrorCode } from '../errors.js';

export type ApiErrorType = 'invalid_request_error' | 'server_error';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly param: string | null = null,
    readonly type: ApiErrorType = status >= 500 ? 'server_error' : 'invalid_request_error',
  ) {
    super(message);
    this.name = 'ApiError';
  }

  toJSON(): { error: { message: string; type: ApiErrorType; param: string | null; code: string } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

export const invalidJson = (why: string) => new ApiError(400, 'invalid_json', `the request body is not valid JSON: ${why}`);
export const invalidParam = (param: string, message: string) => new ApiError(400, 'invalid_value', message, param);
export const missingParam = (param: string) => new ApiError(400, 'missing_required_parameter', `'${param}' is required`, param);
export const unsupported = (param: string, message: string) => new ApiError(400, 'unsupported_feature', message, param);
export const contextLengthExceeded = (param: string, message: string) => new ApiError(400, 'context_length_exceeded', message, param);
export const invalidApiKey = () => new ApiError(401, 'invalid_api_key', 'missing or incorrect API key: send "Authorization: Bearer <key>"');
export const modelNotFound = (model: string, served: string) =>
  new ApiError(404, 'model_not_found', `the model \`${model}\` does not exist: this server serves \`${served}\``, 'model');
export const unknownUrl = (method: string, url: string) => new ApiError(404, 'unknown_url', `unknown route: ${method} ${url}`);
export const methodNotAllowed = (method: string, url: string, allowed: string) =>
  new ApiError(405, 'method_not_allowed', `${method} is not allowed on ${url} (allowed: ${allowed})`);
export const bodyTooLarge = (maxBytes: number) =>
  new ApiError(413, 'request_too_large', `the request body exceeds the limit of ${maxBytes} bytes`);
export const shuttingDown = () => new ApiError(503, 'shutting_down', 'the server is shutting down and admits no new requests');
export const engineDead = (why: string) => new ApiError(503, 'engine_dead', `the inference engine is not running: ${why}`);

/** Status and OpenAI code of each engine error a request can meet. */
const FROM_PEREGRINE: Partial<Record<ErrorCode, { status: number; code: string }>> = {
  PGN_ERR_INVALID_ARGUMENT: { status: 400, code: 'invalid_value' },
  PGN_ERR_PROMPT_TOO_LONG: { status: 400, code: 'context_length_exceeded' },
  PGN_ERR_KV_CACHE_EXHAUSTED: { status: 400, code: 'kv_cache_exhausted' },
  PGN_ERR_TOKENIZER_MISSING: { status: 400, code: 'tokenizer_missing' },
  PGN_ERR_CHAT_TEMPLATE: { status: 400, code: 'chat_template_error' },
  PGN_ERR_UNSUPPORTED_FEATURE: { status: 400, code: 'unsupported_feature' },
  PGN_ERR_QUEUE_FULL: { status: 503, code: 'queue_full' },
  PGN_ERR_ENGINE_DEAD: { status: 503, code: 'engine_dead' },
  PGN_ERR_ABORTED: { status: 499, code: 'aborted' },
};

/** Any thrown value as an ApiError: known engine codes keep their meaning, the rest are 500s. */
export function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  if (e instanceof PeregrineError) {
    const known = FROM_PEREGRINE[e.code];
    const param = typeof e.details.param === 'string' ? e.details.param : null;
    if (known) return new ApiError(known.status, known.code, e.message, param);
    return new ApiError(500, 'internal_error', `${e.code}: ${e.message}`);
  }
  return new ApiError(500, 'internal_error', `internal error: ${(e as Error)?.message ?? String(e)}`);
}

/** Writes `e` as a JSON error response (or ends the response if headers already went out). */
export function sendError(res: ServerResponse, e: unknown, extraHeaders: Record<string, string> = {}): void {
  const err = toApiError(e);
  if (res.headersSent) {
    if (!res.writableEnded) res.end();
    return;
  }
  const body = JSON.stringify(err.toJSON());
  res.writeHead(err.status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body), ...extraHeaders });
  res.end(body);
}
