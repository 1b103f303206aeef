// The one-shot custom all-reduce over CUDA IPC (parallel/custom-allreduce.ts) on 2 GPUs of one
// host; skips without 2. Against NCCL's all-reduce of the same random inputs: bf16, f16 and f32,
// 16 B to 1 MiB, eagerly and replayed three times from one CUDA graph (the barrier counters live
// on the device); the messages it takes; and the refusal path (PEREGRINE_CUSTOM_ALLREDUCE=0).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { gpuCount } from './cuda-harness.js';
import { ncclUniqueId } from '../../src/parallel/nccl.js';
import type { RankReport } from './custom-allreduce-rank.js';

const GPUS = gpuCount();
const skip = GPUS >= 2 ? false : `needs 2 GPUs, found ${GPUS}`;
const RANK = fileURLToPath(new URL('./custom-allreduce-rank.js', import.meta.url));

function runRanks(size: number, envOf: (rank: number) => Record<string, string> = () => ({})): Promise<RankReport[]> {
  const id = [...ncclUniqueId()];
  return Promise.all(Array.from({ length: size }, (_, rank) => new Promise<RankReport>((resolve, reject) => {
    const child = fork(RANK, [], { execArgv: [], env: { ...process.env, NCCL_NVLS_ENABLE: '0', ...envOf(rank) } });
    child.once('message', (m) => resolve(m as RankReport));
    child.once('exit', (code) => reject(new Error(`rank ${rank} exited (code ${code}) without a report`)));
    child.send({ id, rank, size });
  })));
}

test('custom all-reduce equals NCCL on 2 GPUs: bf16 / f16 / f32, 16 B to 1 MiB, eager and graph replays', { skip }, async () => {
  const reports = await runRanks(2);
  for (const r of reports) {
    assert.equal(r.error, undefined, `rank ${r.rank}: ${r.error}`);
    assert.equal(r.refusal, null, `rank ${r.rank} refused: ${r.refusal}`);
    assert.equal(r.cases.length, 15 + 6);
    for (const c of r.cases) {
      assert.ok(c.maxAbs > 0.5, `rank ${r.rank} ${c.name}: inputs look empty (max |x| ${c.maxAbs})`);
      // two ranks: one rounding of a + b either way
      assert.equal(c.mismatches, 0, `rank ${r.rank} ${c.name}: ${c.mismatches} of ${c.numel} differ from NCCL (max |diff| ${c.maxAbsDiff})`);
    }
    assert.deepEqual(r.accepts, { 'bf16 1 MiB': true, 'bf16 1 MiB + 16 B': false, 'bf16 6 elements (12 B)': false, 'i32 4 elements': false });
  }
  assert.deepEqual(reports[1]!.digests, reports[0]!.digests, 'both ranks hold the same sums');
});

/** |custom - NCCL| / max |sum| with more than 2 ranks: the same values summed in another order, rounded once against NCCL's per step */
const REL_TOL: Record<string, number> = { bf16: 2e-2, f16: 3e-3, f32: 1e-5 };

test('custom all-reduce within rounding of NCCL on 4 GPUs, eager and graph replays', { skip: GPUS >= 4 ? false : `needs 4 GPUs, found ${GPUS}` }, async () => {
  const reports = await runRanks(4);
  for (const r of reports) {
    assert.equal(r.error, undefined, `rank ${r.rank}: ${r.error}`);
    assert.equal(r.refusal, null, `rank ${r.rank} refused: ${r.refusal}`);
    assert.equal(r.cases.length, 15 + 6);
    for (const c of r.cases) {
      const tol = REL_TOL[/ (bf16|f16|f32) /.exec(c.name)![1]!]!;
      assert.ok(c.maxAbs > 0.5 && c.maxAbsDiff <= tol * c.maxAbs, `rank ${r.rank} ${c.name}: max |diff| ${c.maxAbsDiff} of max |sum| ${c.maxAbs}`);
    }
  }
  // every rank sums in rank order: the ranks' results are bit-identical (replicated activations stay so)
  for (const r of reports.slice(1)) assert.deepEqual(r.digests, reports[0]!.digests, `rank ${r.rank} differs from rank 0`);
});

test('PEREGRINE_CUSTOM_ALLREDUCE=0 on one rank turns it off on every rank', { skip }, async () => {
  const reports = await runRanks(2, (rank): Record<string, string> => (rank === 1 ? { PEREGRINE_CUSTOM_ALLREDUCE: '0' } : {}));
  for (const r of reports) assert.equal(r.error, undefined, `rank ${r.rank}: ${r.error}`);
  assert.equal(reports[0]!.refusal, 'rank 1 does not take part');
  assert.equal(reports[1]!.refusal, 'PEREGRINE_CUSTOM_ALLREDUCE=0');
  assert.ok(reports.every((r) => r.cases.length === 0));
});
