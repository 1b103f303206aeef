#!/usr/bin/env node
// Runs the compiled node:test suites. Without `--gpu`, every suite runs in one `node --test`
// (GPU suites skip with a clear line where no GPU is present). With `--gpu`, the suites under
// dist/test/gpu run one file at a time, each in its own process group with a wall-clock limit
// (PEREGRINE_GPU_TEST_FILE_TIMEOUT_S, default 300): a suite that hangs (a collective waiting for
// a rank that never comes blocks its event loop, and with it node:test's own timeouts) is killed
// with its children, reported as failed, and the next suite runs.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawn, spawnSync } from 'node:child_process';

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
if (!gpuOnly) {
  const r = spawnSync(process.execPath, ['--test', '--test-concurrency=2', ...files], { stdio: 'inherit' });
  process.exit(r.status ?? 1);
}

const limitS = Number(process.env.PEREGRINE_GPU_TEST_FILE_TIMEOUT_S ?? 300);

/** One suite file in its own process group; resolves with its exit status and TAP counters. */
function runFile(file) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, ['--test-reporter=tap', file], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let text = '';
    const onData = (stream) => (d) => {
      text += d;
      stream.write(d);
    };
    child.stdout.on('data', onData(process.stdout));
    child.stderr.on('data', onData(process.stderr));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid, 'SIGKILL'); // the suite and every rank / node process it started
      } catch {}
    }, limitS * 1000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const count = (name) => [...text.matchAll(new RegExp(`^# ${name} (\\d+)$`, 'gm'))].reduce((n, m) => n + Number(m[1]), 0);
      resolve({ file, code, signal, timedOut, seconds: (Date.now() - t0) / 1000, pass: count('pass'), fail: count('fail'), skipped: count('skipped') });
    });
  });
}

const results = [];
for (const file of files) results.push(await runFile(file));
console.log('\nGPU suites:');
for (const r of results) {
  const status = r.timedOut ? `KILLED after ${limitS} s (hung)` : r.code === 0 ? 'ok' : `FAILED (exit ${r.code ?? r.signal})`;
  console.log(`  ${status.padEnd(24)} ${r.file}  pass ${r.pass}, fail ${r.fail}, skipped ${r.skipped}, ${r.seconds.toFixed(1)} s`);
}
const sum = (k) => results.reduce((n, r) => n + r[k], 0);
console.log(`# pass ${sum('pass')}\n# fail ${sum('fail')}\n# skipped ${sum('skipped')}\n# files failed or hung ${results.filter((r) => r.timedOut || r.code !== 0).length}`);
process.exit(results.every((r) => !r.timedOut && r.code === 0) ? 0 : 1);
