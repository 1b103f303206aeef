// One rank of test/gpu/custom-allreduce.test.ts (a forked process, one GPU): the custom all-reduce
// against NCCL's on the same random inputs (several dtypes and sizes), eagerly and replayed from a
// CUDA graph with fresh inputs each time, and which messages it accepts. Sends back what it saw.
import { createHash } from 'node:crypto';
import type { DType, Tensor } from '../../src/backends/backend.js';
import { CudaBackend } from '../../src/backends/cuda/cuda-backend.js';
import { CustomAllReduce } from '../../src/parallel/custom-allreduce.js';
import { NcclCommunicator } from '../../src/parallel/nccl.js';

export interface RankCase { name: string; numel: number; maxAbsDiff: number; mismatches: number; maxAbs: number }
export interface RankReport { rank: number; refusal: string | null; cases: RankCase[]; accepts: Record<string, boolean>; /** a hash of each case's custom result */ digests: string[]; error?: string }

const MAX_BYTES = 1 << 20;
const BYTES = [16, 8 * 1024, 64 * 1024, 512 * 1024 + 48, MAX_BYTES];
const GRAPH_REPLAYS = 3;

async function compare(b: CudaBackend, name: string, want: Tensor, got: Tensor, numel: number, digests: string[]): Promise<RankCase> {
  const w = await b.downloadF32(want), g = await b.downloadF32(got);
  digests.push(createHash('sha256').update(g.subarray(0, numel)).digest('hex'));
  let maxAbsDiff = 0, mismatches = 0, maxAbs = 0;
  for (let i = 0; i < numel; i++) {
    const d = Math.abs(w[i]! - g[i]!);
    if (!(d === 0)) mismatches++;
    if (!(d <= maxAbsDiff)) maxAbsDiff = d;
    maxAbs = Math.max(maxAbs, Math.abs(w[i]!));
  }
  return { name, numel, maxAbsDiff, mismatches, maxAbs };
}

async function run(m: { id: number[]; rank: number; size: number }): Promise<RankReport> {
  const b = CudaBackend.create({ deviceId: m.rank });
  const nccl = await NcclCommunicator.create(b, Uint8Array.from(m.id), m.rank, m.size);
  const { allReduce: car, refusal } = await CustomAllReduce.create(b, nccl, { maxBytes: MAX_BYTES });
  const report: RankReport = { rank: m.rank, refusal, cases: [], accepts: {}, digests: [] };
  if (car) {
    const seed = (k: number) => 1000 * k + m.rank;
    let k = 0;
    for (const dtype of ['bf16', 'f16', 'f32'] as DType[]) {
      for (const bytes of BYTES) {
        const numel = bytes / (dtype === 'f32' ? 4 : 2);
        const want = b.empty([numel], dtype), got = b.empty([numel], dtype);
        b.fillUniform(want, seed(++k), 1);
        b.fillUniform(got, seed(k), 1);
        nccl.allReduceSum(want, numel);
        car.allReduceSum(got, numel);
        report.cases.push(await compare(b, `eager ${dtype} ${bytes} B`, want, got, numel, report.digests));
        b.free(want); b.free(got);
      }
    }
    // two all-reduces of different sizes captured once, replayed with fresh inputs
    const sizes = [4096, 64 * 1024];
    const ins = sizes.map((n) => b.empty([n], 'bf16'));
    b.beginCapture();
    ins.forEach((t, i) => car.allReduceSum(t, sizes[i]!));
    const graph = b.endCapture();
    for (let r = 0; r < GRAPH_REPLAYS; r++) {
      const refs = sizes.map((n, i) => {
        const t = b.empty([n], 'bf16');
        b.fillUniform(t, seed(++k), 1);
        b.fillUniform(ins[i]!, seed(k), 1);
        return t;
      });
      b.replay(graph);
      refs.forEach((t, i) => nccl.allReduceSum(t, sizes[i]!));
      for (const [i, t] of refs.entries()) report.cases.push(await compare(b, `graph replay ${r} bf16 ${sizes[i]! * 2} B`, t, ins[i]!, sizes[i]!, report.digests));
      refs.forEach((t) => b.free(t));
    }
    graph.dispose();
    const probe = (name: string, t: Tensor, numel: number) => { report.accepts[name] = car.accepts(t, numel); b.free(t); };
    probe('bf16 1 MiB', b.empty([MAX_BYTES / 2], 'bf16'), MAX_BYTES / 2);
    probe('bf16 1 MiB + 16 B', b.empty([MAX_BYTES / 2 + 8], 'bf16'), MAX_BYTES / 2 + 8);
    probe('bf16 6 elements (12 B)', b.empty([6], 'bf16'), 6);
    probe('i32 4 elements', b.empty([4], 'i32'), 4);
    car.dispose();
  }
  nccl.dispose();
  b.dispose();
  return report;
}

process.once('message', (m: { id: number[]; rank: number; size: number }) => {
  run(m).then(
    (r) => process.send!(r),
    (e) => process.send!({ rank: m.rank, refusal: null, cases: [], accepts: {}, digests: [], error: (e as Error).stack ?? String(e) }),
  ).finally(() => process.disconnect());
});
