/**
 * `--quantization fp8|int8|int4` on a plain checkpoint (serve, generate, bench, LLM.load): the
 * folder to load is a `peregrine build` of it, made on first use into a cache and reused after,
 * so a model is quantized once per machine, not at every start.
 *
 * Cache: $PEREGRINE_CACHE_DIR (default ~/.cache/peregrine)/quantized/<name>-<kind>-<key>, the key a
 * hash of the options, the checkpoint's path and its files' names, sizes and mtimes (a changed
 * checkpoint gets a new entry). Built under a temporary name and renamed into place, so an
 * interrupted build is never reused.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PeregrineError } from '../../errors.js';
import { loadModelConfig } from '../../models/config.js';
import { buildQuantizedCheckpoint, type BuildProgress } from './build.js';
import type { CheckpointQuantOptions } from './checkpoint-writer.js';
import { detectQuantizationInDir } from './index.js';
import type { QuantKind } from './types.js';

export const QUANTIZATION_KINDS: readonly QuantKind[] = ['fp8', 'int8', 'int4'];
/** bump when what `peregrine build` writes changes, so older cache entries are not reused */
const CACHE_FORMAT = 1;
const COMPLETE_MARK = '.peregrine-complete';

/** `value` as a quantization kind; PGN_ERR_INVALID_ARGUMENT naming the accepted ones otherwise. */
export function parseQuantization(value: string): QuantKind {
  if ((QUANTIZATION_KINDS as readonly string[]).includes(value)) return value as QuantKind;
  throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `quantization must be one of ${QUANTIZATION_KINDS.join(', ')}, got "${value}"`, { param: 'quantization', value });
}

export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.PEREGRINE_CACHE_DIR || path.join(os.homedir(), '.cache', 'peregrine');
}

export interface QuantizeOnLoadOptions {
  /** default defaultCacheDir() */
  readonly cacheDir?: string;
  readonly onProgress?: (p: BuildProgress) => void;
  /** one line when a build starts or a cached one is used */
  readonly log?: (line: string) => void;
}

/**
 * The checkpoint folder to load for `dir` quantized as `q`: `dir` itself when it is already
 * quantized the same way, else the cached build (made now if missing).
 * @throws PeregrineError PGN_ERR_INVALID_ARGUMENT when `dir` is already quantized another way,
 *   and what `peregrine build` throws (unreadable checkpoint, unwritable cache, ...)
 */
export async function quantizedCheckpointDir(dir: string, q: CheckpointQuantOptions, opts: QuantizeOnLoadOptions = {}): Promise<string> {
  const modelDir = path.resolve(dir);
  const { raw } = loadModelConfig(modelDir);
  const already = detectQuantizationInDir(modelDir, raw);
  if (already) {
    if (already.kind === q.kind) return modelDir;
    throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `${modelDir} is already quantized (${already.method}, ${already.kind}): quantization ${q.kind} needs the BF16 / F32 checkpoint`, { param: 'quantization', method: already.method });
  }
  const root = path.join(opts.cacheDir ?? defaultCacheDir(), 'quantized');
  const entry = path.join(root, `${path.basename(modelDir)}-${q.kind}-${cacheKey(modelDir, q)}`);
  if (fs.existsSync(path.join(entry, COMPLETE_MARK))) {
    opts.log?.(`quantization ${q.kind}: using ${entry}`);
    return entry;
  }
  fs.mkdirSync(root, { recursive: true });
  const tmp = `${entry}.tmp-${process.pid}-${Date.now()}`;
  opts.log?.(`quantization ${q.kind}: quantizing ${modelDir} once into ${entry}`);
  try {
    await buildQuantizedCheckpoint({ ...q, modelDir, outDir: tmp, onProgress: opts.onProgress });
    fs.writeFileSync(path.join(tmp, COMPLETE_MARK), `${new Date().toISOString()} ${modelDir}\n`);
    try {
      fs.renameSync(tmp, entry);
    } catch (e) {
      // another process finished the same entry first: theirs is as good
      if (!fs.existsSync(path.join(entry, COMPLETE_MARK))) throw e;
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  return entry;
}

/** Hash of what the build depends on: options, path, and every file's name, size and mtime. */
function cacheKey(modelDir: string, q: CheckpointQuantOptions): string {
  const h = createHash('sha256');
  h.update(JSON.stringify({ format: CACHE_FORMAT, kind: q.kind, fp8Scale: q.fp8Scale ?? null, groupSize: q.groupSize ?? null, symmetric: q.symmetric ?? null, modelDir }));
  for (const name of fs.readdirSync(modelDir).sort()) {
    const st = fs.statSync(path.join(modelDir, name));
    if (st.isFile()) h.update(`\n${name}\t${st.size}\t${st.mtimeMs}`);
  }
  return h.digest('hex').slice(0, 16);
}

export interface CachedBuild {
  /** the entry's folder */
  readonly dir: string;
  /** the checkpoint it was built from (as recorded when it was made) */
  readonly source: string;
  readonly createdAt: string;
  readonly bytes: number;
}

/** The complete quantized builds in the cache (unfinished `.tmp-` folders are not listed). */
export function listCachedBuilds(cacheDir = defaultCacheDir()): CachedBuild[] {
  const root = path.join(cacheDir, 'quantized');
  if (!fs.existsSync(root)) return [];
  const out: CachedBuild[] = [];
  for (const name of fs.readdirSync(root).sort()) {
    const dir = path.join(root, name);
    const mark = path.join(dir, COMPLETE_MARK);
    if (!fs.existsSync(mark)) continue;
    const [createdAt = '', ...rest] = fs.readFileSync(mark, 'utf8').trim().split(' ');
    const bytes = fs.readdirSync(dir).reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0);
    out.push({ dir, source: rest.join(' '), createdAt, bytes });
  }
  return out;
}

/** Removes every cached build (and unfinished ones); returns the folders removed. */
export function clearCachedBuilds(cacheDir = defaultCacheDir()): string[] {
  const root = path.join(cacheDir, 'quantized');
  if (!fs.existsSync(root)) return [];
  const removed = fs.readdirSync(root).map((name) => path.join(root, name));
  for (const dir of removed) fs.rmSync(dir, { recursive: true, force: true });
  return removed;
}
