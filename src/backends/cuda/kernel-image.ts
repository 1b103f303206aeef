/**
 * Where the kernels come from: `build/kernels.fatbin` (npm run build:kernels, nvcc), or,
 * without it or when the driver finds no code for this GPU in it, the same sources
 * compiled at first use by NVRTC into a per-GPU cache folder
 * (`$PEREGRINE_CACHE_DIR` or `$XDG_CACHE_HOME/peregrine` or `~/.cache/peregrine`, then
 * `kernels/<arch>-<hash>.cubin`; the hash covers the sources, NVRTC's version and options).
 *
 * PEREGRINE_KERNEL_IMAGE=<file> loads that fatbin/cubin; PEREGRINE_KERNELS=nvrtc skips the fatbin.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PeregrineError } from '../../errors.js';
import type { CudaDevice } from './device.js';
import { CudaModule } from './module.js';
import { compileToCubin, nvrtcVersion } from './nvrtc.js';
import { librarySearchDirs } from './library-finder.js';

/** the package root (dist/src/backends/cuda -> ../../../..) */
const PACKAGE_ROOT = fileURLToPath(new URL('../../../../', import.meta.url));
export const KERNELS_FATBIN = join(PACKAGE_ROOT, 'build', 'kernels.fatbin');
export const KERNEL_SOURCES = join(PACKAGE_ROOT, 'src', 'backends', 'cuda', 'kernels');

export interface LoadedKernels {
  readonly module: CudaModule;
  /** where the code came from, for logs: a file path or "nvrtc:<cache file>" */
  readonly origin: string;
}

export function loadKernels(device: CudaDevice): LoadedKernels {
  const explicit = process.env.PEREGRINE_KERNEL_IMAGE;
  if (explicit) return { module: CudaModule.load(device.drv, readBytes(explicit), explicit), origin: explicit };
  let fatbinError: unknown = null;
  if (process.env.PEREGRINE_KERNELS !== 'nvrtc' && existsSync(KERNELS_FATBIN)) {
    try {
      return { module: CudaModule.load(device.drv, readBytes(KERNELS_FATBIN), KERNELS_FATBIN), origin: KERNELS_FATBIN };
    } catch (e) {
      fatbinError = e; // e.g. no code for this GPU: compile for it below
    }
  }
  try {
    const file = compileWithNvrtc(device.smArch);
    return { module: CudaModule.load(device.drv, readBytes(file), file), origin: `nvrtc:${file}` };
  } catch (e) {
    const before = fatbinError ? ` (loading ${KERNELS_FATBIN} failed first: ${(fatbinError as Error).message})` : existsSync(KERNELS_FATBIN) ? '' : ` (${KERNELS_FATBIN} does not exist: run npm run build:kernels where nvcc is installed)`;
    if (e instanceof PeregrineError) {
      e.message = `${e.message}${before}`;
      throw e;
    }
    throw new PeregrineError('PGN_ERR_CUDA', `cannot load the CUDA kernels${before}: ${(e as Error).message}`, {}, { cause: e });
  }
}

/** A file's bytes as a plain Uint8Array (Node's Buffer typings lag TypeScript 5.7's typed arrays). */
function readBytes(path: string): Uint8Array {
  const b = readFileSync(path);
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

function cacheDir(): string {
  const env = process.env;
  const base = env.PEREGRINE_CACHE_DIR ?? (env.XDG_CACHE_HOME ? join(env.XDG_CACHE_HOME, 'peregrine') : join(homedir(), '.cache', 'peregrine'));
  return join(base, 'kernels');
}

/** Folders holding cuda_fp16.h / cuda_bf16.h for NVRTC (it may also have them built in). */
function cudaIncludeDirs(): string[] {
  const dirs = new Set<string>();
  for (const home of [process.env.CUDA_HOME, process.env.CUDA_PATH, '/usr/local/cuda'].filter((h): h is string => !!h)) {
    dirs.add(join(home, 'include'));
    dirs.add(join(home, 'targets', 'x86_64-linux', 'include'));
  }
  for (const lib of librarySearchDirs()) dirs.add(join(lib, '..', 'include'));
  return [...dirs].filter((d) => existsSync(join(d, 'cuda_bf16.h')));
}

/** Compiles every kernel source for `arch` unless the cache has it; returns the cubin file. */
export function compileWithNvrtc(arch: string): string {
  if (!existsSync(KERNEL_SOURCES)) {
    throw new PeregrineError('PGN_ERR_CUDA', `no kernel image and no kernel sources to compile: ${KERNEL_SOURCES} is missing`, { dir: KERNEL_SOURCES });
  }
  const files = readdirSync(KERNEL_SOURCES).filter((f) => f.endsWith('.cu') || f.endsWith('.cuh')).sort();
  const units = files.filter((f) => f.endsWith('.cu'));
  const source = `${units.map((f) => `#include "${f}"`).join('\n')}\n`;
  const options = ['-std=c++17', `-I${KERNEL_SOURCES}`, ...cudaIncludeDirs().map((d) => `-I${d}`)];
  const version = nvrtcVersion();
  const hash = createHash('sha256');
  hash.update(`nvrtc ${version}\n${arch}\n${options.join(' ')}\n`);
  for (const f of files) hash.update(`${f}\n`).update(readFileSync(join(KERNEL_SOURCES, f), 'utf8'));
  const dir = cacheDir();
  const file = join(dir, `${arch}-${hash.digest('hex').slice(0, 16)}.cubin`);
  if (existsSync(file)) return file;
  const cubin = compileToCubin(source, 'peregrine-kernels.cu', arch, options);
  mkdirSync(dir, { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, cubin);
  renameSync(tmp, file);
  return file;
}
