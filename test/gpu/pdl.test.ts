/**
 * Programmatic dependent launch (issue 3) changes no result: pdl-child.js runs once with
 * PEREGRINE_PDL=0 and once with PEREGRINE_PDL=1 (the switch is read once per process), and
 * rmsNorm, attention decode, GPU sampling and golden-fixture greedy decoding through CUDA graphs
 * must come out bit for bit the same. On sm_90+ the PDL run must really have launched with PDL.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CudaBackend } from '../../src/backends/cuda/cuda-backend.js';
import type { PdlChildMeta } from './pdl-child.js';

const skip = CudaBackend.isAvailable() ? false : `no CUDA device: ${CudaBackend.unavailableReason()}`;
const CHILD = join(dirname(fileURLToPath(import.meta.url)), 'pdl-child.js');
const CHILD_TIMEOUT_MS = 180_000;

function runChild(pdl: '0' | '1', dir: string): PdlChildMeta {
  const r = spawnSync(process.execPath, [CHILD, dir], { env: { ...process.env, PEREGRINE_PDL: pdl }, encoding: 'utf8', timeout: CHILD_TIMEOUT_MS });
  assert.equal(r.status, 0, `PEREGRINE_PDL=${pdl} child exited ${r.status ?? r.signal}:\n${r.stderr}`);
  return JSON.parse(readFileSync(join(dir, 'meta.json'), 'utf8')) as PdlChildMeta;
}

function readF32(dir: string, name: string): Float32Array {
  const b = readFileSync(join(dir, `${name}.bin`));
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}

/** Asserts bit-identical arrays; on a difference, says how many and how large. */
function assertSameBits(a: Float32Array, b: Float32Array, what: string): void {
  assert.equal(b.length, a.length, `${what}: length`);
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length), ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  let numDiff = 0, worst = 0, first = -1;
  for (let i = 0; i < ua.length; i++) {
    if (ua[i] === ub[i]) continue;
    if (first < 0) first = i;
    numDiff++;
    worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  }
  assert.equal(numDiff, 0, `${what}: ${numDiff} of ${a.length} values differ with PDL (first at ${first}: ${a[first]} vs ${b[first]}; max |difference| ${worst})`);
}

test('PEREGRINE_PDL=1 gives the same bits as without PDL: ops and CUDA-graph decoding', { skip, timeout: 2 * CHILD_TIMEOUT_MS + 10_000 }, (t) => {
  const base = mkdtempSync(join(tmpdir(), 'pgn-pdl-off-'));
  const pdl = mkdtempSync(join(tmpdir(), 'pgn-pdl-on-'));
  try {
    const off = runChild('0', base);
    const on = runChild('1', pdl);
    t.diagnostic(`${on.device} sm_${on.computeCapability.join('')}: PDL ${on.pdlActive ? 'active' : 'not active'} in the PEREGRINE_PDL=1 run`);
    assert.equal(off.pdlActive, false, 'PEREGRINE_PDL=0 launched with PDL');
    if (on.computeCapability[0] >= 9) assert.equal(on.pdlActive, true, 'PEREGRINE_PDL=1 on sm_90+ did not launch with PDL (see the child\'s warning)');
    for (const name of ['rmsnorm-out', 'rmsnorm-residual', 'attention-decode']) assertSameBits(readF32(base, name), readF32(pdl, name), name);
    assert.deepEqual(on.sampling, off.sampling, 'GPU sampling results');
    assert.deepEqual(Object.keys(on.fixtures), Object.keys(off.fixtures));
    for (const [name, f] of Object.entries(off.fixtures)) {
      const g = on.fixtures[name]!;
      assert.ok(f.numCapturedGraphs > 0 && g.numCapturedGraphs === f.numCapturedGraphs, `${name}: graphs captured ${f.numCapturedGraphs} / ${g.numCapturedGraphs}`);
      assert.deepEqual(g.tokenIds, f.tokenIds, `${name}: greedy tokens`);
      assertSameBits(readF32(base, `decode-${name}`), readF32(pdl, `decode-${name}`), `${name}: decode logits`);
    }
  } finally {
    rmSync(base, { recursive: true, force: true });
    rmSync(pdl, { recursive: true, force: true });
  }
});
