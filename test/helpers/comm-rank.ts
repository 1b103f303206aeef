// One rank of a communicator test: `runCollectives` is what every rank runs (CPU threads in
// test/parallel-cpu-communicator.test.ts, GPU processes in test/gpu/nccl.test.ts). As a worker
// thread this file joins the CPU shared memory it is sent and runs it.
import { isMainThread, parentPort } from 'node:worker_threads';
import type { Backend, DType } from '../../src/backends/backend.js';
import { CpuBackend } from '../../src/backends/cpu/cpu-backend.js';
import type { Communicator } from '../../src/parallel/communicator.js';
import { CpuCommunicator, type CpuCommShared } from '../../src/parallel/cpu-communicator.js';

export interface CollectiveResults {
  sum: number[];
  gathered: number[];
  broadcast: number[];
  broadcastI32: number[];
}

/**
 * rank r contributes [r + 1, 10 (r + 1), 100 (r + 1)], rows [[r, r], [10 + r, 10 + r]] (one row
 * of them too), [r, -r] and i32 [7 + r, 2^30 + r]; every value is exact in bf16 (but the i32s).
 */
export async function runCollectives(comm: Communicator, b: Backend, dtype: DType = 'f32'): Promise<CollectiveResults> {
  const r = comm.rank;
  const x = b.fromF32([3], Float32Array.from([1, 10, 100].map((v) => v * (r + 1))), dtype);
  comm.allReduceSum(x, 3);
  const part = b.fromF32([2, 2], Float32Array.from([r, r, 10 + r, 10 + r]), dtype);
  const out = b.empty([2, 2 * comm.size], dtype);
  comm.allGather(out, part, 2, 2);
  const row = b.empty([1, 2 * comm.size], dtype);
  comm.allGather(row, part, 1, 2);
  const y = b.fromF32([2], Float32Array.from([r, -r]), dtype);
  comm.broadcast(y, 2, comm.size - 1);
  const ids = b.fromI32([2], Int32Array.from([7 + r, 2 ** 30 + r]));
  comm.broadcast(ids, 2, 0);
  return {
    sum: [...(await b.downloadF32(x))],
    gathered: [...(await b.downloadF32(out)), ...(await b.downloadF32(row))],
    broadcast: [...(await b.downloadF32(y))],
    broadcastI32: [...(await b.downloadI32(ids))],
  };
}

/** What runCollectives returns on every rank of a group of `size`. */
export function expectedCollectives(size: number): CollectiveResults {
  const ranks = Array.from({ length: size }, (_, r) => r);
  const sum = size * (size + 1) / 2;
  return {
    sum: [sum, 10 * sum, 100 * sum],
    gathered: [...ranks.flatMap((r) => [r, r]), ...ranks.flatMap((r) => [10 + r, 10 + r]), ...ranks.flatMap((r) => [r, r])],
    broadcast: [size - 1, -(size - 1)],
    broadcastI32: [7, 2 ** 30],
  };
}

if (!isMainThread) {
  parentPort!.once('message', (m: { shared: CpuCommShared; rank: number; exitCode?: number }) => {
    const comm = new CpuCommunicator(m.shared, m.rank, 5_000);
    process.on('exit', (code) => comm.abort(`rank ${m.rank} exited (code ${code})`));
    if (m.exitCode !== undefined) process.exit(m.exitCode);
    void runCollectives(comm, new CpuBackend()).then((res) => parentPort!.postMessage(res));
  });
}
