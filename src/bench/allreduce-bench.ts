/**
 * All-reduce latency on the GPUs of one host: NCCL against the custom one-shot kernel
 * (parallel/custom-allreduce.ts), bf16, each timed inside a CUDA graph of ITERS all-reduces
 * (as decode steps run them), median of several replays. Starts one process per GPU.
 *
 *   node dist/src/bench/allreduce-bench.js [--tp 2] [--sizes 8K,64K,512K] [--blocks 8,16] [--json]
 * (--blocks: the custom kernel's grid, one column each)
 */
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { CudaBackend } from '../backends/cuda/cuda-backend.js';
import type { Communicator } from '../parallel/communicator.js';
import { CustomAllReduce } from '../parallel/custom-allreduce.js';
import { NcclCommunicator, ncclUniqueId } from '../parallel/nccl.js';
import { formatTable, median } from './stats.js';

const ITERS = 64;
const REPLAYS = 15;
const WARMUP_REPLAYS = 3;
const DEFAULT_SIZES = ['8K', '32K', '64K', '128K', '256K', '512K', '1M', '2M'];

export interface AllReduceRow { bytes: number; ncclUs: number; /** by grid size; empty when the custom all-reduce is off */ customUs: Record<number, number> }

function parseBytes(s: string): number {
  const m = /^(\d+)([KM]?)$/i.exec(s.trim());
  if (!m) throw new Error(`--sizes: "${s}" is not a size like 64K or 1M`);
  return Number(m[1]) * (m[2]?.toUpperCase() === 'M' ? 1 << 20 : m[2] ? 1 << 10 : 1);
}

/** us per all-reduce of `numel` bf16 elements, ITERS of them in one graph */
async function timeInGraph(b: CudaBackend, allReduce: (t: ReturnType<CudaBackend['empty']>, n: number) => void, numel: number): Promise<number> {
  const t = b.empty([numel], 'bf16');
  b.fillUniform(t, 7, 1e-3);
  b.beginCapture();
  for (let i = 0; i < ITERS; i++) allReduce(t, numel);
  const graph = b.endCapture();
  for (let i = 0; i < WARMUP_REPLAYS; i++) b.replay(graph);
  const start = b.createEvent(), end = b.createEvent();
  const times: number[] = [];
  for (let i = 0; i < REPLAYS; i++) {
    start.record(b.stream);
    b.replay(graph);
    end.record(b.stream);
    end.synchronize();
    times.push((end.elapsedMsSince(start) * 1000) / ITERS);
  }
  graph.dispose();
  b.free(t);
  return median(times);
}

type RankMessage = { id: number[]; rank: number; size: number; sizes: number[]; blocks: number[] };

async function rankMain(m: RankMessage): Promise<AllReduceRow[]> {
  const b = CudaBackend.create({ deviceId: m.rank });
  const nccl: Communicator = await NcclCommunicator.create(b, Uint8Array.from(m.id), m.rank, m.size);
  const rows: AllReduceRow[] = [];
  for (const bytes of m.sizes) rows.push({ bytes, ncclUs: await timeInGraph(b, (t, n) => nccl.allReduceSum(t, n), bytes / 2), customUs: {} });
  for (const blocks of m.blocks) {
    const { allReduce: custom, refusal } = await CustomAllReduce.create(b, nccl, { maxBytes: Math.max(...m.sizes), blocks });
    if (!custom) {
      if (m.rank === 0) process.stderr.write(`custom all-reduce off: ${refusal}\n`);
      break;
    }
    for (const row of rows) row.customUs[blocks] = await timeInGraph(b, (t, n) => custom.allReduceSum(t, n), row.bytes / 2);
    custom.dispose();
  }
  nccl.dispose();
  b.dispose();
  return rows;
}

async function main(argv: string[]): Promise<void> {
  const arg = (name: string) => { const i = argv.indexOf(`--${name}`); return i >= 0 ? argv[i + 1] : undefined; };
  const tp = Number(arg('tp') ?? 2);
  const sizes = (arg('sizes')?.split(',') ?? DEFAULT_SIZES).map(parseBytes);
  const blocks = (arg('blocks') ?? '16').split(',').map(Number);
  const id = [...ncclUniqueId()];
  const self = fileURLToPath(import.meta.url);
  const results = await Promise.all(Array.from({ length: tp }, (_, rank) => new Promise<AllReduceRow[]>((resolve, reject) => {
    const child = fork(self, ['--rank'], { execArgv: [], env: { ...process.env, NCCL_NVLS_ENABLE: '0' } });
    child.once('message', (r: { rows?: AllReduceRow[]; error?: string }) => (r.rows ? resolve(r.rows) : reject(new Error(`rank ${rank}: ${r.error}`))));
    child.once('exit', (code) => reject(new Error(`rank ${rank} exited (code ${code})`)));
    child.send({ id, rank, size: tp, sizes, blocks } satisfies RankMessage);
  })));
  const rows = results[0]!;
  if (argv.includes('--json')) return void process.stdout.write(JSON.stringify({ tp, iters: ITERS, rows }) + '\n');
  process.stdout.write(`all-reduce bf16 over ${tp} GPUs, us each inside a CUDA graph of ${ITERS} (median of ${REPLAYS} replays, rank 0)\n\n`);
  process.stdout.write(formatTable([
    ['bytes', 'NCCL us', ...blocks.map((n) => `custom ${n} blocks us`), 'NCCL / best custom'],
    ...rows.map((r) => {
      const custom = blocks.map((n) => r.customUs[n] ?? '-');
      const best = Math.min(...Object.values(r.customUs));
      return [r.bytes >= 1 << 20 ? `${r.bytes >> 20} MiB` : `${r.bytes >> 10} KiB`, r.ncclUs, ...custom, Number.isFinite(best) ? `${(r.ncclUs / best).toFixed(2)}x` : '-'];
    }),
  ]) + '\n');
}

if (process.argv.includes('--rank')) {
  process.once('message', (m: RankMessage) => {
    rankMain(m).then((rows) => process.send!({ rows }), (e) => process.send!({ error: (e as Error).stack ?? String(e) })).finally(() => process.disconnect());
  });
} else if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).catch((e) => {
    process.stderr.write(`${(e as Error).stack ?? e}\n`);
    process.exit(1);
  });
}
