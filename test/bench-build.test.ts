// `peregrine bench build`: a random checkpoint of a shape that loads as written (HF layout,
// sharded with an index), and the build timing table for each quantization.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { writeRandomCheckpoint } from '../src/bench/random-checkpoint.js';
import { SHAPES } from '../src/bench/shapes.js';
import { loadModel } from '../src/models/load-model.js';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'main.js');

test('a random checkpoint of tiny-llama is sharded as asked and loads', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pgn-rand-ck-'));
  try {
    const r = writeRandomCheckpoint(SHAPES['tiny-llama']!, dir, { maxShardBytes: 600_000 });
    assert.ok(r.files.length >= 3, `${r.files.length} shards`);
    assert.deepEqual(readdirSync(dir).sort(), ['config.json', 'model.safetensors.index.json', ...r.files].sort());
    const m = loadModel(dir, new CpuBackend());
    assert.equal(m.spec.numLayers, 2);
    assert.equal(m.spec.hiddenSize, 256);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('bench build --json times each quantization and cleans up', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pgn-bench-build-'));
  try {
    const r = spawnSync(process.execPath, [CLI, 'bench', 'build', '--shape', 'tiny-llama', '--quantization', 'fp8,int4', '--dir', dir, '--json'], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout.trim()) as { rows: Array<{ kind: string; seconds: number; numQuantized: number; outputBytes: number; inputBytes: number }> };
    assert.deepEqual(j.rows.map((x) => x.kind), ['fp8', 'int4']);
    for (const x of j.rows) {
      assert.equal(x.numQuantized, 14, `${x.kind}: 2 layers x 7 linears`);
      assert.ok(x.outputBytes < x.inputBytes, `${x.kind} output ${x.outputBytes} < input ${x.inputBytes}`);
    }
    assert.deepEqual(readdirSync(dir), [], 'the checkpoints are removed');
    const bad = spawnSync(process.execPath, [CLI, 'bench', 'build', '--shape', 'tiny-llama', '--quantization', 'int3'], { encoding: 'utf8' });
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /--quantization takes fp8, int8, int4/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
