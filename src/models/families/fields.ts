/**
 * Typed readers for HF config.json fields. Every bad value is a PGN_ERR_CONFIG_INVALID
 * that names the key, so family files stay a list of switches.
 */
import { PeregrineError } from '../../errors.js';
import type { Activation } from '../spec.js';

export type HfConfig = Record<string, unknown>;

export function configInvalid(field: string, message: string): PeregrineError {
  return new PeregrineError('PGN_ERR_CONFIG_INVALID', `config.json: ${message}`, { field });
}

/** A config value Peregrine reads but does not implement: PGN_ERR_UNSUPPORTED_FEATURE naming the key. */
export function unsupported(field: string, message: string): PeregrineError {
  return new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', `config.json: ${message}`, { field });
}

function describe(v: unknown): string {
  return v === undefined ? 'missing' : `got ${JSON.stringify(v)}`;
}

/** The value at `key`, with JSON `null` read as absent. */
export function get(raw: HfConfig, key: string): unknown {
  const v = raw[key];
  return v === null ? undefined : v;
}

export function isObject(v: unknown): v is HfConfig {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** `field` is the name errors show when the key sits inside a sub-object (`rope_scaling.factor`). */
export function requirePositiveInt(raw: HfConfig, key: string, field = key): number {
  const v = get(raw, key);
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) {
    throw configInvalid(field, `"${field}" must be a positive integer (${describe(v)})`);
  }
  return v;
}

export function optionalPositiveInt(raw: HfConfig, key: string, field = key): number | undefined {
  return get(raw, key) === undefined ? undefined : requirePositiveInt(raw, key, field);
}

export function optionalNonNegativeInt(raw: HfConfig, key: string, field = key): number | undefined {
  const v = get(raw, key);
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
    throw configInvalid(field, `"${field}" must be an integer >= 0 (${describe(v)})`);
  }
  return v;
}

export function requireNumber(raw: HfConfig, key: string, field = key): number {
  const v = get(raw, key);
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw configInvalid(field, `"${field}" must be a number (${describe(v)})`);
  }
  return v;
}

export function optionalNumber(raw: HfConfig, key: string, field = key): number | undefined {
  return get(raw, key) === undefined ? undefined : requireNumber(raw, key, field);
}

export function optionalBool(raw: HfConfig, key: string, field = key): boolean | undefined {
  const v = get(raw, key);
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw configInvalid(field, `"${field}" must be true or false (${describe(v)})`);
  return v;
}

/** A token id: an integer >= 0 or absent (null). */
export function optionalTokenId(raw: HfConfig, key: string): number | undefined {
  const v = get(raw, key);
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
    throw configInvalid(key, `"${key}" must be a token id (${describe(v)})`);
  }
  return v;
}

/** `eos_token_id` may be one id or a list of ids. */
export function optionalTokenIds(raw: HfConfig, key: string): number[] | undefined {
  const v = get(raw, key);
  if (v === undefined) return undefined;
  const ids = Array.isArray(v) ? v : [v];
  for (const id of ids) {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
      throw configInvalid(key, `"${key}" must be a token id or a list of token ids (${describe(v)})`);
    }
  }
  return ids as number[];
}

/** HF ACT2FN names -> the activations the backends implement. */
const ACTIVATIONS: Readonly<Record<string, Activation>> = {
  silu: 'silu',
  swish: 'silu',
  gelu: 'gelu',
  gelu_pytorch_tanh: 'gelu_tanh',
  gelu_new: 'gelu_tanh',
  gelu_fast: 'gelu_tanh',
  relu: 'relu',
};

export function parseActivation(raw: HfConfig, key: string, fallback: Activation): Activation {
  const v = get(raw, key);
  if (v === undefined) return fallback;
  const act = typeof v === 'string' && Object.hasOwn(ACTIVATIONS, v) ? ACTIVATIONS[v] : undefined;
  if (act === undefined) {
    throw new PeregrineError(
      'PGN_ERR_UNSUPPORTED_FEATURE',
      `config.json: activation "${key}"=${JSON.stringify(v)} is not supported (supported: ${Object.keys(ACTIVATIONS).join(', ')})`,
      { field: key, value: v },
    );
  }
  return act;
}
