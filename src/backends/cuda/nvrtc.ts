/**
 * Run-time compilation with NVRTC, for machines where the kernels were not built with
 * nvcc: CUDA C++ source -> cubin for one GPU architecture.
 */
import { PeregrineError } from '../../errors.js';
import { HANDLE } from './driver.js';
import { bindLibrary, findLibrary, NVRTC } from './library-finder.js';

void HANDLE; // registers the handle type used in the signatures below
const H = 'PgnCuHandle';
const SIGNATURES = {
  nvrtcVersion: 'int nvrtcVersion(_Out_ int *major, _Out_ int *minor)',
  nvrtcGetErrorString: 'const char *nvrtcGetErrorString(int result)',
  nvrtcCreateProgram: `int nvrtcCreateProgram(_Out_ ${H} *prog, const char *src, const char *name, int numHeaders, void *headers, void *includeNames)`,
  nvrtcDestroyProgram: `int nvrtcDestroyProgram(_Inout_ ${H} *prog)`,
  nvrtcCompileProgram: `int nvrtcCompileProgram(${H} prog, int numOptions, const char **options)`,
  nvrtcGetProgramLogSize: `int nvrtcGetProgramLogSize(${H} prog, _Out_ size_t *size)`,
  nvrtcGetProgramLog: `int nvrtcGetProgramLog(${H} prog, char *log)`,
  nvrtcGetCUBINSize: `int nvrtcGetCUBINSize(${H} prog, _Out_ size_t *size)`,
  nvrtcGetCUBIN: `int nvrtcGetCUBIN(${H} prog, char *cubin)`,
} as const;

type Nvrtc = ReturnType<typeof bindLibrary<typeof SIGNATURES>>;

let lib: Nvrtc | null = null;

export function loadNvrtc(): Nvrtc {
  lib ??= bindLibrary(findLibrary(NVRTC), SIGNATURES);
  return lib;
}

export function nvrtcVersion(): string {
  const n = loadNvrtc();
  const major: number[] = [0];
  const minor: number[] = [0];
  n.nvrtcVersion(major, minor);
  return `${major[0]}.${minor[0]}`;
}

/** Compiles `source` (named `name` in diagnostics) to a cubin for `arch` (e.g. "sm_90a"). */
export function compileToCubin(source: string, name: string, arch: string, options: readonly string[]): Uint8Array {
  const n = loadNvrtc();
  const fail = (call: string, rc: number, log = ''): PeregrineError =>
    new PeregrineError('PGN_ERR_CUDA', `NVRTC ${call} failed for ${name} (${arch}): ${n.nvrtcGetErrorString(rc) ?? rc}${log ? `\n${log}` : ''}`, { call, arch, status: rc });
  const progBox: unknown[] = [null];
  let rc = n.nvrtcCreateProgram(progBox, source, name, 0, null, null);
  if (rc !== 0) throw fail('nvrtcCreateProgram', rc);
  const prog = progBox[0];
  try {
    const opts = [`--gpu-architecture=${arch}`, ...options];
    rc = n.nvrtcCompileProgram(prog, opts.length, opts);
    if (rc !== 0) throw fail('nvrtcCompileProgram', rc, programLog(n, prog));
    const size: number[] = [0];
    rc = n.nvrtcGetCUBINSize(prog, size);
    if (rc !== 0) throw fail('nvrtcGetCUBINSize', rc);
    const cubin = new Uint8Array(Number(size[0]));
    rc = n.nvrtcGetCUBIN(prog, cubin);
    if (rc !== 0) throw fail('nvrtcGetCUBIN', rc);
    return cubin;
  } finally {
    n.nvrtcDestroyProgram(progBox);
  }
}

function programLog(n: Nvrtc, prog: unknown): string {
  const size: number[] = [0];
  if (n.nvrtcGetProgramLogSize(prog, size) !== 0 || Number(size[0]) <= 1) return '';
  const buf = Buffer.alloc(Number(size[0]));
  if (n.nvrtcGetProgramLog(prog, buf) !== 0) return '';
  return buf.toString('utf8').replace(/\0+$/, '');
}
