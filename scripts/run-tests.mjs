#!/usr/bin/env node
// Runs the compiled node:test suites. `--gpu` runs only dist/test/gpu; without it, every
// suite runs (GPU suites skip with a clear line where no GPU is present).
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

const gpuOnly = process.argv.includes('--gpu');
const extra = process.argv.slice(2).filter((a) => a !== '--gpu');
const root = gpuOnly ? 'dist/test/gpu' : 'dist/test';

function findTests(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...findTests(p));
    else if (name.endsWith('.test.js')) out.push(p);
  }
  return out.sort();
}

const files = extra.length > 0 ? extra : findTests(root);
if (files.length === 0) {
  console.error(`no test files under ${root}`);
  process.exit(1);
}
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=2', ...files], { stdio: 'inherit' });
process.exit(r.status ?? 1);
