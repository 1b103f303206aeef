/**
 * generation_config.json -> the model's default sampling settings and stop tokens.
 * Like vLLM, the sampling values are read whether or not `do_sample` is set
 * (`doSample` is passed on for callers that want HF's greedy-when-false behaviour).
 */
import { join } from 'node:path';
import { PeregrineError, isPeregrineError } from '../errors.js';
import { readJsonObject } from './config.js';
import { optionalBool, optionalNonNegativeInt, optionalNumber, optionalPositiveInt, optionalTokenId, optionalTokenIds, type HfConfig } from './families/fields.js';

export interface GenerationDefaults {
  /** `eos_token_id` (one id or a list); [] when absent */
  eosTokenIds: number[];
  bosTokenId: number | null;
  temperature?: number;
  topP?: number;
  topK?: number;
  repetitionPenalty?: number;
  maxNewTokens?: number;
  doSample?: boolean;
}

/**
 * Read `<dir>/generation_config.json`; null when the file is absent.
 * @throws PeregrineError PGN_ERR_CONFIG_INVALID (bad JSON or a field of the wrong type; names file and field)
 */
export function loadGenerationConfig(dir: string): GenerationDefaults | null {
  const path = join(dir, 'generation_config.json');
  const raw = readJsonObject(path, null);
  if (raw === null) return null;
  try {
    return parseGenerationConfig(raw);
  } catch (e) {
    if (!isPeregrineError(e)) throw e;
    throw new PeregrineError(e.code, `${path}: ${e.message.replace(/^config\.json: /, '')}`, { ...e.details, path }, { cause: e });
  }
}

export function parseGenerationConfig(raw: HfConfig): GenerationDefaults {
  const out: GenerationDefaults = {
    eosTokenIds: optionalTokenIds(raw, 'eos_token_id') ?? [],
    bosTokenId: optionalTokenId(raw, 'bos_token_id') ?? null,
  };
  const set = <K extends keyof GenerationDefaults>(k: K, v: GenerationDefaults[K] | undefined): void => {
    if (v !== undefined) out[k] = v;
  };
  set('temperature', optionalNumber(raw, 'temperature'));
  set('topP', optionalNumber(raw, 'top_p'));
  set('topK', optionalNonNegativeInt(raw, 'top_k')); // 0 = off, as in HF
  set('repetitionPenalty', optionalNumber(raw, 'repetition_penalty'));
  set('maxNewTokens', optionalPositiveInt(raw, 'max_new_tokens'));
  set('doSample', optionalBool(raw, 'do_sample'));
  return out;
}
