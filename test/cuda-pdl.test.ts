/**
 * Programmatic dependent launch (issue 3) without a GPU: the CUlaunchConfig / CUlaunchAttribute
 * bytes, the PEREGRINE_PDL switch and the support rules, Kernel.launch against a fake driver (PDL
 * off: cuLaunchKernel as before; on: cuLaunchKernelEx with the attribute; a failing first PDL
 * launch falls back for good), and the kernel sources: every kernel waits first, and the wait
 * compiles to griddepcontrol for sm_90 only (nvcc, where installed).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import koffi from 'koffi';
import type { Driver } from '../src/backends/cuda/driver.js';
import { Kernel } from '../src/backends/cuda/module.js';
import {
  LAUNCH_ATTRIBUTE, LAUNCH_CONFIG, PdlLaunch, pdlRequested, pdlRequestedIn, pdlUnsupportedReason, writeLaunchConfig, writePdlAttribute,
} from '../src/backends/cuda/pdl.js';
import type { CudaStream } from '../src/backends/cuda/stream.js';
import { isPeregrineError } from '../src/errors.js';

const KERNELS = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'backends', 'cuda', 'kernels');

test('CUlaunchConfig and CUlaunchAttribute bytes follow cuda.h', () => {
  assert.equal(LAUNCH_CONFIG.sizeBytes, 56);
  assert.equal(LAUNCH_ATTRIBUTE.sizeBytes, 72);
  const view = new DataView(new ArrayBuffer(LAUNCH_CONFIG.sizeBytes));
  new Uint8Array(view.buffer).fill(0xee);
  writeLaunchConfig(view, 7, 6, 5, 128, 2, 1, 49152, 0x7f00_1234_5678n, 0x5555_0000_0040n, 1);
  const u32 = (o: number) => view.getUint32(o, true);
  assert.deepEqual([0, 4, 8, 12, 16, 20, 24].map(u32), [7, 6, 5, 128, 2, 1, 49152]);
  assert.equal(u32(28), 0, 'padding before hStream');
  assert.equal(view.getBigUint64(32, true), 0x7f00_1234_5678n, 'hStream at 32');
  assert.equal(view.getBigUint64(40, true), 0x5555_0000_0040n, 'attrs at 40');
  assert.equal(u32(48), 1, 'numAttrs at 48');

  const attr = new DataView(new ArrayBuffer(LAUNCH_ATTRIBUTE.sizeBytes));
  new Uint8Array(attr.buffer).fill(0xee);
  writePdlAttribute(attr);
  assert.equal(attr.getUint32(0, true), 6, 'id CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION');
  assert.equal(attr.getUint32(4, true), 0, 'padding after id');
  assert.equal(attr.getInt32(8, true), 1, 'value.programmaticStreamSerializationAllowed at 8');
  assert.ok(new Uint8Array(attr.buffer, 12).every((b) => b === 0), 'the rest of the value union is zero');
});

test('PEREGRINE_PDL=0 turns PDL off, =1 forces it (warning where unsupported), anything else is auto; the process reads it once', () => {
  assert.equal(pdlRequestedIn({ PEREGRINE_PDL: '1' }), 'forced');
  assert.equal(pdlRequestedIn({ PEREGRINE_PDL: '0' }), 'off');
  for (const v of [undefined, '', 'true', 'yes', ' 1', ' 0']) assert.equal(pdlRequestedIn({ PEREGRINE_PDL: v }), 'auto', `PEREGRINE_PDL=${v}`);
  const before = process.env.PEREGRINE_PDL;
  delete process.env.PEREGRINE_PDL;
  try {
    assert.equal(pdlRequested(), 'auto');
    process.env.PEREGRINE_PDL = '0';
    assert.equal(pdlRequested(), 'auto', 'read once, at the first launch setup');
  } finally {
    if (before === undefined) delete process.env.PEREGRINE_PDL;
    else process.env.PEREGRINE_PDL = before;
  }
});

test('PDL needs cuLaunchKernelEx, a CUDA 12.3 driver and sm_90', () => {
  assert.equal(pdlUnsupportedReason(true, 12080, 9, 0), null);
  assert.equal(pdlUnsupportedReason(true, 12030, 10, 0), null);
  assert.match(pdlUnsupportedReason(false, 12080, 9, 0)!, /no cuLaunchKernelEx/);
  assert.match(pdlUnsupportedReason(true, 12020, 9, 0)!, /12\.2 is older than 12\.3/);
  assert.match(pdlUnsupportedReason(true, 12080, 8, 9)!, /sm_89; PDL needs sm_90/);
});

interface Call { fn: string; grid?: number[]; block?: number[]; shared?: number; stream?: bigint; attrId?: number; attrValue?: number; numAttrs?: number; params: bigint }

/** A driver that records launches; cuLaunchKernelEx answers with the codes in `exCodes`, then 0. */
function fakeDriver(exCodes: number[] = [], opts: { cc?: number; version?: number; hasEx?: boolean } = {}): { drv: Driver; calls: Call[] } {
  const calls: Call[] = [];
  const drv = {
    cuLaunchKernel: (_fn: unknown, gx: number, gy: number, gz: number, bx: number, by: number, bz: number, shared: number, stream: unknown, params: unknown) => {
      calls.push({ fn: 'cuLaunchKernel', grid: [gx, gy, gz], block: [bx, by, bz], shared, stream: koffi.address(stream), params: koffi.address(params) });
      return 0;
    },
    cuLaunchKernelEx: opts.hasEx === false ? null : (config: unknown, _fn: unknown, params: unknown, extra: unknown) => {
      assert.equal(extra, null);
      const v = new DataView(koffi.view(config, LAUNCH_CONFIG.sizeBytes));
      const attrs = koffi.decode(config, LAUNCH_CONFIG.attrs, 'void *');
      const a = new DataView(koffi.view(attrs, LAUNCH_ATTRIBUTE.sizeBytes));
      calls.push({
        fn: 'cuLaunchKernelEx', grid: [0, 4, 8].map((o) => v.getUint32(o, true)), block: [12, 16, 20].map((o) => v.getUint32(o, true)),
        shared: v.getUint32(24, true), stream: v.getBigUint64(32, true), numAttrs: v.getUint32(48, true),
        attrId: a.getUint32(0, true), attrValue: a.getInt32(8, true), params: koffi.address(params),
      });
      return exCodes.shift() ?? 0;
    },
    cuCtxGetDevice: (b: number[]) => { b[0] = 0; return 0; },
    cuDeviceGetAttribute: (b: number[], attr: number) => { b[0] = attr === 75 ? (opts.cc ?? 90) / 10 | 0 : (opts.cc ?? 90) % 10; return 0; },
    cuDriverGetVersion: (b: number[]) => { b[0] = opts.version ?? 12080; return 0; },
    cuGetErrorName: (_c: number, b: string[]) => { b[0] = 'CUDA_ERROR_INVALID_VALUE'; return 0; },
    cuGetErrorString: (_c: number, b: string[]) => { b[0] = 'invalid argument'; return 0; },
  };
  return { drv: drv as unknown as Driver, calls };
}

const stream = { handle: koffi.alloc('uint8_t', 8) } as unknown as CudaStream;
const streamAddress = koffi.address(stream.handle);

test('without PDL, Kernel.launch calls cuLaunchKernel only', () => {
  const { drv, calls } = fakeDriver();
  const k = new Kernel(drv, {}, 'rms_norm_bf16', ['ptr', 'i32']);
  k.launch([3, 2], 256, 0, stream, [0x1000, 5]);
  assert.equal(calls.length, 1);
  assert.equal(calls[0]!.fn, 'cuLaunchKernel');
  assert.deepEqual(calls[0]!.grid, [3, 2, 1]);
  assert.equal(calls[0]!.stream, streamAddress);
});

test('with PDL, launches carry the attribute, the same grid, stream and parameter table', () => {
  const { drv, calls } = fakeDriver();
  const warnings: string[] = [];
  const pdl = new PdlLaunch(drv, (l) => warnings.push(l));
  const plain = new Kernel(drv, {}, 'add_bf16', ['ptr', 'ptr', 'ptr', 'i64', 'i32']);
  const k = new Kernel(drv, {}, 'add_bf16', ['ptr', 'ptr', 'ptr', 'i64', 'i32'], pdl);
  assert.equal(pdl.active, false, 'not before a launch succeeded');
  k.launch([4, 3, 2], [64, 2], 1024, stream, [1, 2, 3, 4, 1]);
  k.launch(9, 32, 0, stream, [1, 2, 3, 4, 1]);
  k.launch([0, 1], 32, 0, stream, [1, 2, 3, 4, 1]); // empty grid: nothing
  plain.launch(1, 32, 0, stream, [1, 2, 3, 4, 1]);
  assert.deepEqual(calls.map((c) => c.fn), ['cuLaunchKernelEx', 'cuLaunchKernelEx', 'cuLaunchKernel']);
  const [a, b] = calls;
  assert.deepEqual([a!.grid, a!.block, a!.shared], [[4, 3, 2], [64, 2, 1], 1024]);
  assert.deepEqual([b!.grid, b!.block, b!.shared], [[9, 1, 1], [32, 1, 1], 0]);
  for (const c of [a!, b!]) {
    assert.deepEqual([c.stream, c.numAttrs, c.attrId, c.attrValue], [streamAddress, 1, 6, 1]);
  }
  assert.equal(a!.params, b!.params, 'the kernel reuses its parameter table');
  assert.equal(pdl.active, true);
  assert.deepEqual(warnings, []);
});

test('right after a cuBLASLt matmul (stream.afterLibraryKernel) our next kernel launches plainly, the one after with PDL', () => {
  const { drv, calls } = fakeDriver();
  const k = new Kernel(drv, {}, 'add_bf16', ['ptr', 'ptr', 'ptr', 'i64', 'i32'], new PdlLaunch(drv, () => {}));
  const s = { handle: stream.handle, afterLibraryKernel: false } as unknown as CudaStream;
  k.launch(1, 32, 0, s, [1, 2, 3, 4, 1]);
  s.afterLibraryKernel = true; // as LtPlans.matmul leaves it
  k.launch(1, 32, 0, s, [1, 2, 3, 4, 1]);
  assert.equal(s.afterLibraryKernel, false);
  k.launch(1, 32, 0, s, [1, 2, 3, 4, 1]);
  assert.deepEqual(calls.map((c) => c.fn), ['cuLaunchKernelEx', 'cuLaunchKernel', 'cuLaunchKernelEx']);
});

test('a failing first PDL launch falls back to cuLaunchKernel for good, with one warning', () => {
  const { drv, calls } = fakeDriver([1]);
  const warnings: string[] = [];
  const pdl = new PdlLaunch(drv, (l) => warnings.push(l));
  const k = new Kernel(drv, {}, 'sample_rows', ['ptr'], pdl);
  k.launch(1, 512, 0, stream, [0x2000]);
  k.launch(1, 512, 0, stream, [0x2000]);
  assert.deepEqual(calls.map((c) => c.fn), ['cuLaunchKernelEx', 'cuLaunchKernel', 'cuLaunchKernel']);
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /^PDL: the first PDL launch \(cuLaunchKernelEx of sample_rows\) failed with CUDA_ERROR_INVALID_VALUE \(1\).*without PDL/);
  assert.equal(pdl.active, false);
});

test('a PDL launch failing later is a PGN_ERR_CUDA naming cuLaunchKernelEx and the kernel', () => {
  const { drv } = fakeDriver([0, 1]);
  const k = new Kernel(drv, {}, 'attn_decode_bf16_d128_h4', ['ptr'], new PdlLaunch(drv, () => {}));
  k.launch(1, 128, 0, stream, [1]);
  assert.throws(() => k.launch([8, 2], 128, 0, stream, [1]), (e) => isPeregrineError(e) && e.code === 'PGN_ERR_CUDA' &&
    /cuLaunchKernelEx\(attn_decode_bf16_d128_h4, grid \[8, 2, 1\], block \[128, 1, 1\], 0 B shared\) failed: CUDA_ERROR_INVALID_VALUE/.test(e.message));
});

test('forCurrentContext: on where supported unless turned off; unsupported: off, with a warning only when forced', () => {
  const lines: string[] = [];
  assert.equal(PdlLaunch.forCurrentContext(fakeDriver([], { cc: 90 }).drv, (l) => lines.push(l), 'off'), null);
  for (const setting of ['auto', 'forced'] as const) {
    assert.equal(PdlLaunch.forCurrentContext(fakeDriver([], { cc: 89 }).drv, (l) => lines.push(l), setting), null);
    assert.equal(PdlLaunch.forCurrentContext(fakeDriver([], { version: 12020 }).drv, (l) => lines.push(l), setting), null);
    assert.equal(PdlLaunch.forCurrentContext(fakeDriver([], { hasEx: false }).drv, (l) => lines.push(l), setting), null);
    assert.equal(lines.length, setting === 'auto' ? 0 : 3, `${setting}: warnings`);
    assert.ok(PdlLaunch.forCurrentContext(fakeDriver([], { cc: 90 }).drv, (l) => lines.push(l), setting) instanceof PdlLaunch, setting);
  }
  assert.match(lines[0]!, /^PEREGRINE_PDL=1 ignored: the GPU is sm_89/);
  assert.equal(lines.length, 3);
});

/** Every kernel definition of a .cu file, with the first statement of its body. */
function kernelsOf(source: string): { name: string; first: string }[] {
  const found: { name: string; first: string }[] = [];
  for (let i = source.indexOf('extern "C" __global__'); i >= 0; i = source.indexOf('extern "C" __global__', i + 1)) {
    const open = source.indexOf('{', i);
    const head = source.slice(i, open);
    const name = /([\w#]+)\s*\(/.exec(head.replace(/__launch_bounds__\([^)]*(\([^)]*\))?[^)]*\)/g, ''))?.[1] ?? head;
    const first = source.slice(open + 1).replace(/^[\s\\]+/, '').split(/[;\n]/)[0]!;
    found.push({ name, first });
  }
  return found;
}

/** Whether `file` includes common.cuh, directly or through the headers it includes. */
function includesCommon(file: string, seen = new Set<string>()): boolean {
  if (file === 'common.cuh') return true;
  if (seen.has(file)) return false;
  seen.add(file);
  const includes = [...readFileSync(join(KERNELS, file), 'utf8').matchAll(/^#include "([\w.]+)"/gm)].map((m) => m[1]!);
  return includes.some((h) => includesCommon(h, seen));
}

/**
 * Kernels that load weights (which no kernel of a step writes) before they wait, so that under PDL the
 * loads overlap the previous kernel: the file's kernels begin with a call to this device function, which
 * must itself wait exactly once.
 */
const EARLY_WEIGHT_LOADS: Readonly<Record<string, string>> = { 'gemv.cu': 'gemv_rows16', 'quant_gemv.cu': 'qgemv' };

/** The body of device function `name` in `source` (from its definition's opening brace to the matching one). */
function bodyOf(source: string, name: string): string {
  const def = new RegExp(`__device__[^;{]*\\b${name}\\s*\\(`).exec(source);
  assert.ok(def, `no __device__ definition of ${name}`);
  const open = source.indexOf('{', def.index);
  let depth = 0;
  for (let i = open; i < source.length; i++) {
    if (source[i] === '{') depth++;
    else if (source[i] === '}' && --depth === 0) return source.slice(open, i + 1);
  }
  return source.slice(open);
}

test('every kernel starts with PGN_PDL_WAIT() (reading or writing before it races the previous kernel)', () => {
  const files = readdirSync(KERNELS).filter((f) => f.endsWith('.cu'));
  let numKernels = 0;
  for (const f of files) {
    const source = readFileSync(join(KERNELS, f), 'utf8');
    assert.ok(includesCommon(f), `${f} does not include common.cuh (where PGN_PDL_WAIT is defined), directly or through a header`);
    const early = EARLY_WEIGHT_LOADS[f];
    if (early) assert.equal(bodyOf(source, early).split('PGN_PDL_WAIT();').length - 1, 1, `${f}: ${early} must wait exactly once`);
    for (const k of kernelsOf(source)) {
      numKernels++;
      if (early && k.first.startsWith(`${early}<`)) continue;
      assert.equal(k.first, 'PGN_PDL_WAIT()', `${f}: kernel ${k.name} begins with "${k.first}", not PGN_PDL_WAIT()`);
    }
  }
  assert.ok(numKernels >= 40, `found ${numKernels} kernel definitions in ${KERNELS}`);
  assert.deepEqual(kernelsOf('extern "C" __global__ void __launch_bounds__(128, F(4)) k_##S(int* x) {\\\n  x[0] = 1; }'), [{ name: 'k_##S', first: 'x[0] = 1' }]);
});

function findNvcc(): string | null {
  for (const c of [process.env.PEREGRINE_NVCC, 'nvcc', '/usr/local/cuda/bin/nvcc'].filter((c): c is string => !!c)) {
    if (spawnSync(c, ['--version']).status === 0) return c;
  }
  return null;
}

const nvcc = findNvcc();
test('PGN_PDL_WAIT / PGN_PDL_TRIGGER emit griddepcontrol for sm_90 and nothing for sm_80', { skip: nvcc ? false : 'nvcc not found' }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'pgn-pdl-'));
  try {
    const probe = join(dir, 'probe.cu');
    writeFileSync(probe, '#include "common.cuh"\nextern "C" __global__ void probe(int* x) { PGN_PDL_WAIT(); x[threadIdx.x] += 1; PGN_PDL_TRIGGER(); }\n');
    const ptx = (arch: string) => {
      const outFile = join(dir, `${arch}.ptx`);
      const r = spawnSync(nvcc!, ['-ptx', `-arch=${arch}`, '-I', KERNELS, '-o', outFile, probe], { encoding: 'utf8' });
      assert.equal(r.status, 0, `nvcc -arch=${arch}: ${r.stderr}`);
      return readFileSync(outFile, 'utf8');
    };
    const sm90 = ptx('compute_90');
    assert.match(sm90, /griddepcontrol\.wait;[\s\S]*griddepcontrol\.launch_dependents;/);
    assert.doesNotMatch(ptx('compute_80'), /griddepcontrol/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
