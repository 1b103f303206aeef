/**
 * Finds the NVIDIA shared libraries at run time: `PEREGRINE_CUDA_LIBS` (colon-separated
 * folders), `LD_LIBRARY_PATH`, the CUDA toolkit (`CUDA_HOME`, `/usr/local/cuda`), and the
 * `nvidia/<pkg>/lib` folders of Python environments (pip's nvidia-* wheels), in that order.
 * A missing library is `PGN_ERR_LIBRARY_NOT_FOUND` naming every place searched.
 */
import koffi from 'koffi';
import { existsSync, readdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { PeregrineError } from '../../errors.js';

/** A library by file stem (`libcublasLt.so`) and the major versions we accept, newest first. */
export interface LibrarySpec {
  readonly stem: string;
  readonly versions: readonly number[];
  /** what the library is, for the error message */
  readonly what: string;
}

export const CUBLASLT: LibrarySpec = { stem: 'libcublasLt.so', versions: [13, 12], what: 'cuBLASLt (CUDA toolkit or the nvidia-cublas pip wheel)' };
export const NVRTC: LibrarySpec = { stem: 'libnvrtc.so', versions: [13, 12], what: 'NVRTC (CUDA toolkit or the nvidia-cuda-nvrtc pip wheel)' };

const TOOLKIT_LIB_DIRS = ['lib64', 'targets/x86_64-linux/lib', 'targets/sbsa-linux/lib', 'lib'];
/** where the driver's libcuda.so.1 lives when the dynamic loader does not know it */
export const DRIVER_DIRS = ['/usr/lib/x86_64-linux-gnu', '/usr/lib64', '/usr/local/nvidia/lib64', '/usr/lib/wsl/lib', '/usr/lib/aarch64-linux-gnu'];

function splitPath(v: string | undefined): string[] {
  return (v ?? '').split(':').map((s) => s.trim()).filter((s) => s.length > 0);
}

function listDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** `site-packages` folders of the Python environments we know how to find without running python. */
function pythonSitePackages(env: NodeJS.ProcessEnv): string[] {
  const prefixes = [env.VIRTUAL_ENV, env.CONDA_PREFIX, '/opt/torch/.venv', '/usr/local', '/usr', join(homedir(), '.local')]
    .filter((p): p is string => typeof p === 'string' && p.length > 0);
  const out: string[] = [];
  for (const prefix of prefixes) {
    for (const libDir of ['lib', 'lib64']) {
      for (const py of listDir(join(prefix, libDir)).filter((d) => d.startsWith('python3'))) {
        for (const kind of ['site-packages', 'dist-packages']) {
          const p = join(prefix, libDir, py, kind);
          if (existsSync(p)) out.push(p);
        }
      }
    }
  }
  return out;
}

/** Every folder searched, in order (duplicates removed). */
export function librarySearchDirs(env: NodeJS.ProcessEnv = process.env): string[] {
  const dirs: string[] = [...splitPath(env.PEREGRINE_CUDA_LIBS), ...splitPath(env.LD_LIBRARY_PATH)];
  for (const home of [env.CUDA_HOME, env.CUDA_PATH, '/usr/local/cuda'].filter((h): h is string => !!h)) {
    for (const sub of TOOLKIT_LIB_DIRS) dirs.push(join(home, sub));
  }
  for (const site of pythonSitePackages(env)) {
    for (const pkg of listDir(join(site, 'nvidia'))) dirs.push(join(site, 'nvidia', pkg, 'lib'));
  }
  return [...new Set(dirs)];
}

/** The file of `spec` in `dir`: `stem.<major>` for an accepted major, else the unversioned stem. */
function matchIn(dir: string, spec: LibrarySpec): string | null {
  const files = new Set(listDir(dir));
  for (const v of spec.versions) {
    if (files.has(`${spec.stem}.${v}`)) return join(dir, `${spec.stem}.${v}`);
  }
  return files.has(spec.stem) ? join(dir, spec.stem) : null;
}

/** Absolute path of the library, or PGN_ERR_LIBRARY_NOT_FOUND naming the places searched. */
export function findLibrary(spec: LibrarySpec, env: NodeJS.ProcessEnv = process.env): string {
  const dirs = librarySearchDirs(env);
  for (const dir of dirs) {
    const hit = matchIn(dir, spec);
    if (hit) return hit;
  }
  throw libraryNotFound(spec.stem, spec.what, dirs);
}

export function libraryNotFound(name: string, what: string, searched: readonly string[]): PeregrineError {
  const places = searched.length > 0 ? searched.map((d) => `  ${d}`).join('\n') : '  (no folders)';
  return new PeregrineError(
    'PGN_ERR_LIBRARY_NOT_FOUND',
    `${name} (${what}) was not found. Searched:\n${places}\nSet PEREGRINE_CUDA_LIBS to the folder that holds it.`,
    { library: name, searched: [...searched] },
  );
}

/**
 * Loads the shared library at `path` and binds every signature of `signatures` through koffi;
 * the result also carries `path`. A library that fails to load is PGN_ERR_LIBRARY_NOT_FOUND.
 */
export function bindLibrary<S extends Record<string, string>>(path: string, signatures: S): { readonly [K in keyof S]: KoffiFn } & { readonly path: string } {
  let l: ReturnType<typeof koffi.load>;
  try {
    l = koffi.load(path);
  } catch (e) {
    throw new PeregrineError('PGN_ERR_LIBRARY_NOT_FOUND', `cannot load ${path}: ${(e as Error).message}`, { library: path }, { cause: e });
  }
  const fns: Record<string, KoffiFn | string> = { path };
  for (const [name, sig] of Object.entries(signatures)) fns[name] = l.func(sig);
  return fns as { readonly [K in keyof S]: KoffiFn } & { readonly path: string };
}

export type KoffiFn = ReturnType<ReturnType<typeof koffi.load>['func']>;
