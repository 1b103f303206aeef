/**
 * Typed errors with stable codes. Tests and clients match `code`, never the message text.
 */
export type ErrorCode =
  // weights / checkpoints
  | 'PGN_ERR_WEIGHTS_NOT_FOUND'
  | 'PGN_ERR_WEIGHTS_HEADER_TRUNCATED'
  | 'PGN_ERR_WEIGHTS_HEADER_INVALID'
  | 'PGN_ERR_WEIGHTS_TRUNCATED'
  | 'PGN_ERR_WEIGHTS_DTYPE'
  | 'PGN_ERR_WEIGHTS_SHAPE'
  | 'PGN_ERR_WEIGHTS_MISSING_TENSOR'
  | 'PGN_ERR_WEIGHTS_INDEX_INVALID'
  // config / models
  | 'PGN_ERR_CONFIG_NOT_FOUND'
  | 'PGN_ERR_CONFIG_INVALID'
  | 'PGN_ERR_UNKNOWN_ARCHITECTURE'
  | 'PGN_ERR_UNSUPPORTED_FEATURE'
  // tokenizer
  | 'PGN_ERR_TOKENIZER_MISSING'
  | 'PGN_ERR_TOKENIZER_INVALID'
  | 'PGN_ERR_CHAT_TEMPLATE'
  // requests
  | 'PGN_ERR_INVALID_ARGUMENT'
  | 'PGN_ERR_PROMPT_TOO_LONG'
  | 'PGN_ERR_KV_CACHE_EXHAUSTED'
  | 'PGN_ERR_ABORTED'
  | 'PGN_ERR_QUEUE_FULL'
  | 'PGN_ERR_ENGINE_DEAD'
  // devices / native libraries
  | 'PGN_ERR_DEVICE_UNAVAILABLE'
  | 'PGN_ERR_LIBRARY_NOT_FOUND'
  | 'PGN_ERR_CUDA'
  | 'PGN_ERR_CUBLAS'
  | 'PGN_ERR_NCCL'
  | 'PGN_ERR_OUT_OF_MEMORY'
  | 'PGN_ERR_INTERNAL';

export class PeregrineError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, details: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PeregrineError';
    this.code = code;
    this.details = details;
  }
}

export function isPeregrineError(e: unknown, code?: ErrorCode): e is PeregrineError {
  return e instanceof PeregrineError && (code === undefined || e.code === code);
}
