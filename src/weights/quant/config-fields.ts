/** Typed reads of quantization_config fields; a wrong type is PGN_ERR_CONFIG_INVALID naming the key. */
import { invalidQuantConfig } from './types.js';

export type JsonObject = Record<string, unknown>;

export function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function optNumber(o: JsonObject, key: string): number | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw invalidQuantConfig(`"${key}" must be a number, got ${JSON.stringify(v)}`, { key });
  return v;
}

export function optString(o: JsonObject, key: string): string | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw invalidQuantConfig(`"${key}" must be a string, got ${JSON.stringify(v)}`, { key });
  return v;
}

export function optBool(o: JsonObject, key: string): boolean | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw invalidQuantConfig(`"${key}" must be true or false, got ${JSON.stringify(v)}`, { key });
  return v;
}

export function optStringList(o: JsonObject, key: string): string[] {
  const v = o[key];
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) throw invalidQuantConfig(`"${key}" must be a list of strings`, { key });
  return v as string[];
}

export function optObject(o: JsonObject, key: string): JsonObject | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (!isObject(v)) throw invalidQuantConfig(`"${key}" must be an object`, { key });
  return v;
}
