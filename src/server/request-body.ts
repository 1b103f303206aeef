/** Reads a JSON request body under a size cap. */
import type { IncomingMessage } from 'node:http';
import { ApiError, bodyTooLarge, invalidJson } from './errors.js';

/** Largest request body the server reads (32 MiB: long prompts as token-id lists fit easily). */
export const DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024;

/**
 * The body parsed as a JSON object.
 * @throws ApiError 413 when it exceeds `maxBytes`; 400 when it is not JSON or not an object.
 */
export async function readJsonBody(req: IncomingMessage, maxBytes = DEFAULT_MAX_BODY_BYTES): Promise<Record<string, unknown>> {
  const declared = Number(req.headers['content-length'] ?? NaN);
  if (declared > maxBytes) throw bodyTooLarge(maxBytes);
  req.setEncoding('utf8');
  let text = '';
  let sizeBytes = 0;
  for await (const chunk of req as AsyncIterable<string>) {
    sizeBytes += Buffer.byteLength(chunk);
    if (sizeBytes > maxBytes) throw bodyTooLarge(maxBytes);
    text += chunk;
  }
  if (text.trim() === '') throw invalidJson('the body is empty');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw invalidJson((e as Error).message);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new ApiError(400, 'invalid_json', 'the request body must be a JSON object');
  }
  return value as Record<string, unknown>;
}
