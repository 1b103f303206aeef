/** Small helpers over node:util parseArgs for the CLI commands. */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { KvCacheDType } from '../backends/backend.js';
import { PeregrineError } from '../errors.js';
import { KV_CACHE_DTYPES, parseKvCacheDtype } from '../runner/kv-cache.js';

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

export class UsageError extends Error {}

export function parse(argv: string[], options: OptionSpec): Record<string, string | boolean | undefined> {
  try {
    const { values } = parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: false });
    return values as Record<string, string | boolean | undefined>;
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

export function intArg(v: string | boolean | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== 'string' || !Number.isInteger(n)) throw new UsageError(`--${name} expects an integer, got "${String(v)}"`);
  return n;
}

export function floatArg(v: string | boolean | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== 'string' || v.trim() === '' || !Number.isFinite(n)) throw new UsageError(`--${name} expects a number, got "${String(v)}"`);
  return n;
}

export function idListArg(v: string | boolean | undefined, name: string): number[] | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v.trim() === '') throw new UsageError(`--${name} expects comma-separated token ids`);
  return v.split(',').map((s) => {
    const n = Number(s.trim());
    if (!Number.isInteger(n) || n < 0) throw new UsageError(`--${name}: "${s}" is not a token id`);
    return n;
  });
}

export function requireString(v: string | boolean | undefined, name: string): string {
  if (typeof v !== 'string' || v === '') throw new UsageError(`--${name} is required`);
  return v;
}

export function deviceArg(v: string | boolean | undefined): 'cpu' | 'cuda' {
  if (v === undefined) return 'cpu';
  if (v !== 'cpu' && v !== 'cuda') throw new UsageError(`--device expects cpu or cuda, got "${String(v)}"`);
  return v;
}

/** --kv-cache-dtype auto|fp8 (fp8_e4m3 too); undefined when not given */
export function kvCacheDtypeArg(v: string | boolean | undefined): KvCacheDType | undefined {
  if (v === undefined) return undefined;
  try {
    return parseKvCacheDtype(String(v));
  } catch {
    throw new UsageError(`--kv-cache-dtype expects ${KV_CACHE_DTYPES.join(' or ')} (fp8 = E4M3, also fp8_e4m3), got "${String(v)}"`);
  }
}

export function describeError(e: unknown): string {
  if (e instanceof PeregrineError) return `error [${e.code}]: ${e.message}`;
  if (e instanceof UsageError) return `usage error: ${e.message}`;
  return `error: ${(e as Error)?.stack ?? String(e)}`;
}
