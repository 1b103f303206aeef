/**
 * Typed readers of request fields. Each one names the field in its 400, as OpenAI does;
 * `null` counts as absent.
 */
import { invalidParam, missingParam } from '../errors.js';

export type Body = Record<string, unknown>;

const describe = (v: unknown) => (Array.isArray(v) ? 'a list' : v === null ? 'null' : typeof v);

export function optNumber(body: Body, name: string): number | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw invalidParam(name, `'${name}' must be a number, got ${describe(v)}`);
  return v;
}

export function optInt(body: Body, name: string, min = Number.MIN_SAFE_INTEGER, max = Number.MAX_SAFE_INTEGER): number | undefined {
  const v = optNumber(body, name);
  if (v === undefined) return undefined;
  if (!Number.isSafeInteger(v)) throw invalidParam(name, `'${name}' must be an integer, got ${v}`);
  if (v < min) throw invalidParam(name, `'${name}' must be at least ${min}, got ${v}`);
  if (v > max) throw invalidParam(name, `'${name}' must be at most ${max}, got ${v}`);
  return v;
}

export function optBool(body: Body, name: string): boolean | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw invalidParam(name, `'${name}' must be a boolean, got ${describe(v)}`);
  return v;
}

export function optString(body: Body, name: string): string | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw invalidParam(name, `'${name}' must be a string, got ${describe(v)}`);
  return v;
}

export function optObject(body: Body, name: string): Body | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) throw invalidParam(name, `'${name}' must be an object, got ${describe(v)}`);
  return v as Body;
}

/** A string or a list of strings, as a list. */
export function optStringList(body: Body, name: string): string[] | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'string') return [v];
  if (Array.isArray(v) && v.every((s) => typeof s === 'string')) return v as string[];
  throw invalidParam(name, `'${name}' must be a string or a list of strings`);
}

export function optIntList(body: Body, name: string): number[] | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (Array.isArray(v) && v.every((x) => Number.isSafeInteger(x))) return v as number[];
  throw invalidParam(name, `'${name}' must be a list of integers`);
}

export function required<T>(value: T | undefined, name: string): T {
  if (value === undefined) throw missingParam(name);
  return value;
}
