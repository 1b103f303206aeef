// The CPU communicator over worker threads: the collectives' results on every rank, and a dead
// or missing rank turning a collective into PGN_ERR_ENGINE_DEAD instead of a hang.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { CpuCommunicator, createCpuCommShared, type CpuCommShared } from '../src/parallel/cpu-communicator.js';
import { expectedCollectives, runCollectives, type CollectiveResults } from './helpers/comm-rank.js';

const RANK_URL = new URL('./helpers/comm-rank.js', import.meta.url);

function startRank(shared: CpuCommShared, rank: number, exitCode?: number): { result: Promise<CollectiveResults>; exited: Promise<number> } {
  const w = new Worker(RANK_URL);
  w.postMessage({ shared, rank, exitCode });
  const result = new Promise<CollectiveResults>((resolve, reject) => { w.once('message', resolve); w.once('error', reject); });
  result.catch(() => {});
  return { result, exited: new Promise((resolve) => w.once('exit', resolve)) };
}

test('all-reduce, all-gather (by columns) and broadcast agree on every rank', async () => {
  const size = 3;
  const shared = createCpuCommShared(size, 64);
  const others = [1, 2].map((r) => startRank(shared, r));
  const mine = await runCollectives(new CpuCommunicator(shared, 0, 5_000), new CpuBackend());
  const all = [mine, ...(await Promise.all(others.map((o) => o.result)))];
  assert.deepEqual(expectedCollectives(3).gathered, [0, 0, 1, 1, 2, 2, 10, 10, 11, 11, 12, 12, 0, 0, 1, 1, 2, 2]);
  for (const [r, res] of all.entries()) assert.deepEqual(res, expectedCollectives(size), `rank ${r}`);
  await Promise.all(others.map((o) => o.exited));
});

test('a rank that exits turns the others\' collective into PGN_ERR_ENGINE_DEAD naming it', async () => {
  const shared = createCpuCommShared(2, 16);
  const dying = startRank(shared, 1, 3);
  const comm = new CpuCommunicator(shared, 0, 60_000);
  const t0 = Date.now();
  assert.throws(() => comm.allReduceSum(new CpuBackend().fromF32([2], new Float32Array(2)), 2),
    (e: any) => e.code === 'PGN_ERR_ENGINE_DEAD' && /rank 1 exited \(code 3\)/.test(e.message));
  assert.ok(Date.now() - t0 < 5_000, 'no wait for the 60 s timeout');
  assert.equal(await dying.exited, 3);
  // later collectives fail at once too
  assert.throws(() => comm.broadcast(new CpuBackend().fromF32([1], new Float32Array(1)), 1, 0), (e: any) => e.code === 'PGN_ERR_ENGINE_DEAD');
});

test('a rank that never arrives is bounded by the timeout', () => {
  const comm = new CpuCommunicator(createCpuCommShared(2, 16), 0, 100);
  assert.throws(() => comm.allReduceSum(new CpuBackend().fromF32([2], new Float32Array(2)), 2),
    (e: any) => e.code === 'PGN_ERR_ENGINE_DEAD' && /rank 0 waited 100 ms for the other ranks/.test(e.message));
});

test('a collective larger than the shared slots is an internal error, not a corruption', () => {
  const comm = new CpuCommunicator(createCpuCommShared(1, 4), 0);
  assert.throws(() => comm.allReduceSum(new CpuBackend().fromF32([8], new Float32Array(8)), 8), (e: any) => e.code === 'PGN_ERR_INTERNAL' && /8 elements exceeds .* slots of 4/.test(e.message));
});

test('a reason claimed but not yet written is waited for, not read empty (the abort publishes after writing)', async () => {
  const shared = createCpuCommShared(2, 16);
  const ctl = new Int32Array(shared.control, 0, 4);
  Atomics.store(ctl, 2, 1); // an abort that has claimed the word and is writing its reason
  // another thread finishes that abort 30 ms later, as a dying rank's 'exit' handler would
  const writer = new Worker(`
    const { workerData } = require('node:worker_threads');
    const ctl = new Int32Array(workerData, 0, 4);
    Atomics.wait(ctl, 0, 0, 30);
    const bytes = new TextEncoder().encode('rank 1 exited (code 7)');
    new Uint8Array(workerData, 16, 512).set(bytes);
    Atomics.store(ctl, 3, bytes.length);
    Atomics.store(ctl, 2, 2);
    Atomics.notify(ctl, 2);
  `, { eval: true, workerData: shared.control });
  const exited = new Promise((resolve) => writer.once('exit', resolve));
  const comm = new CpuCommunicator(shared, 0, 60_000);
  assert.throws(() => comm.allReduceSum(new CpuBackend().fromF32([2], new Float32Array(2)), 2),
    (e: any) => e.code === 'PGN_ERR_ENGINE_DEAD' && /stopped: rank 1 exited \(code 7\)$/.test(e.message));
  await exited;
});
