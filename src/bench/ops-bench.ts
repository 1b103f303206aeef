/**
 * Times each CUDA op and the GEMMs on Llama-3.1-8B shapes (hidden 4096, 32 heads, 8 KV heads,
 * head size 128, FFN 14336, vocab 128256) and prints a table: GPU time per op, achieved
 * bandwidth (bytes each op must move at least) and TFLOP/s, against a device-to-device copy
 * measured in the same run.
 *
 *   node dist/src/bench/ops-bench.js [--quick] [--only <substring>] [--gemv]
 *
 * A second table compares the decode-shaped GEMV (cuda-gemv.ts) with cuBLASLt on the same
 * linears at M = 1..16 rows (its default plan and the fastest of every plan) and says which
 * one `linear` takes; `--gemv` prints only that table (`--quick` and `--only` skip it).
 *
 * Each op is captured ITERS times into a CUDA graph and timed by events around replays
 * (median of REPEATS), so host launch cost stays out. Inputs rotate over enough copies to
 * exceed the L2 cache, so weights and KV are read from HBM as in a real step.
 */
import type { AttentionMetadata, Tensor } from '../backends/backend.js';
import { CudaBackend, type CudaTensor } from '../backends/cuda/cuda-backend.js';
import { gemv, gemvPlan, gemvPlanName, gemvPlans, gemvPolicy, gemvTakes, type GemvPlan } from '../backends/cuda/cuda-gemv.js';
import { ringGemv } from '../backends/cuda/cuda-ring-gemv.js';
import { QGEMV_MAX_M, qgemvChunkM } from '../backends/cuda/cuda-quant-gemv.js';
import { check } from '../backends/cuda/driver.js';
import { quantCases } from './ops-bench-quant.js';

const HIDDEN = 4096, HEADS = 32, KV_HEADS = 8, HEAD_DIM = 128, FFN = 14336, VOCAB = 128256;
const QKV = (HEADS + 2 * KV_HEADS) * HEAD_DIM;
const BLOCK = 16;
const ITERS = 24;
const REPEATS = 7;
/** rotate inputs until the working set is this many times the L2 size */
const L2_FACTOR = 4;
const MAX_SETS = 12;
/** Llama-3.1-8B linears: name, N (out), K (in), f32 out */
const LINEARS = [['qkv_proj', QKV, HIDDEN, false], ['o_proj', HIDDEN, HIDDEN, false], ['gate_up_proj', 2 * FFN, HIDDEN, false], ['down_proj', HIDDEN, FFN, false], ['lm_head (f32)', VOCAB, HIDDEN, true]] as const;
const GEMV_ROWS = [1, 2, 4, 8, 16];

/** One benchmarked op on one shape (ops-bench-quant.ts makes the quantized ones). */
export interface BenchCase {
  readonly op: string;
  readonly shape: string;
  /** least bytes the op must move through HBM */
  readonly bytes: number;
  readonly flops: number;
  /** bytes of one input set (to size the rotation) */
  readonly setBytes: number;
  /** allocates one input set and returns its launcher */
  make(): () => void;
}

interface Row { op: string; shape: string; us: number; tbs: number; tflops: number }

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const only = args.includes('--only') ? args[args.indexOf('--only') + 1] ?? '' : '';
const gemvOnly = args.includes('--gemv');

function main(): void {
  if (!CudaBackend.isAvailable()) {
    console.log(`ops-bench: no CUDA device: ${CudaBackend.unavailableReason()}`);
    return;
  }
  const be = CudaBackend.create();
  const { props } = be;
  console.log(`# ops-bench on ${props.name} (${props.numSMs} SMs, ${(props.l2CacheBytes / 2 ** 20).toFixed(0)} MiB L2), ${new Date().toISOString()}`);
  console.log(`# kernels: ${be.kernels.origin}`);
  const copyTbs = copyBandwidth(be);
  console.log(`# device-to-device copy: ${copyTbs.toFixed(2)} TB/s (read + write)`);
  if (!gemvOnly) {
    launchOverhead(be);
    const rows: Row[] = [];
    for (const c of cases(be)) {
      if (only && !`${c.op} ${c.shape}`.includes(only)) continue;
      const us = timeCase(be, c);
      rows.push({ op: c.op, shape: c.shape, us, tbs: c.bytes / us / 1e6, tflops: c.flops / us / 1e6 });
      for (const t of live.splice(0)) be.free(t);
    }
    printTable(rows, copyTbs);
  }
  if (gemvOnly || (!quick && !only)) gemvVsCublas(be, copyTbs);
  be.dispose();
}

/** tensors made for the case being timed, freed after it */
const live: Tensor[] = [];
function own<T extends Tensor>(t: T): T {
  live.push(t);
  return t;
}

let seed = 1;
function rand(be: CudaBackend, shape: number[], dtype: 'bf16' | 'f32' = 'bf16', scale = 1): Tensor {
  const t = own(be.empty(shape, dtype));
  be.fillUniform(t, seed++, scale);
  return t;
}

function copyBandwidth(be: CudaBackend): number {
  const bytes = 2 ** 30;
  const a = be.empty([bytes / 2], 'bf16');
  const b = be.empty([bytes / 2], 'bf16');
  const drv = be.dev.drv;
  const run = (): void => check(drv, drv.cuMemcpyDtoDAsync((b as CudaTensor).ptr, (a as CudaTensor).ptr, bytes, be.stream.handle), 'cuMemcpyDtoDAsync');
  const ms = medianMs(be, () => { for (let i = 0; i < 5; i++) run(); }) / 5;
  be.free(a);
  be.free(b);
  return (2 * bytes) / ms / 1e9;
}

/** Host time of an eager launch, and GPU time per kernel inside a graph replay (a tiny add). */
function launchOverhead(be: CudaBackend): void {
  const a = rand(be, [1, 8]), o = own(be.empty([1, 8], 'bf16'));
  const n = 2000;
  for (let i = 0; i < 100; i++) be.add(o, a, a, 1);
  be.stream.synchronize();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) be.add(o, a, a, 1);
  const hostUs = Number(process.hrtime.bigint() - t0) / 1000 / n;
  be.stream.synchronize();
  be.beginCapture();
  for (let i = 0; i < n; i++) be.add(o, a, a, 1);
  const graph = be.endCapture();
  const graphUs = (medianMs(be, () => be.replay(graph)) * 1000) / n;
  graph.dispose();
  for (const t of live.splice(0)) be.free(t);
  console.log(`# eager launch: ${hostUs.toFixed(2)} us host time per kernel; in a graph replay: ${graphUs.toFixed(2)} us per kernel`);
}

/** Median ms of `fn` (which queues work) over REPEATS, after a warm-up run. */
function medianMs(be: CudaBackend, fn: () => void): number {
  const start = be.createEvent();
  const end = be.createEvent();
  fn();
  const times: number[] = [];
  for (let r = 0; r < REPEATS; r++) {
    start.record(be.stream);
    fn();
    end.record(be.stream);
    end.synchronize();
    times.push(end.elapsedMsSince(start));
  }
  start.destroy();
  end.destroy();
  return times.sort((x, y) => x - y)[Math.floor(times.length / 2)]!;
}

/** input sets to rotate so that they exceed the L2 cache L2_FACTOR times */
function numSets(be: CudaBackend, setBytes: number): number {
  return Math.max(1, Math.min(MAX_SETS, Math.ceil((L2_FACTOR * be.props.l2CacheBytes) / Math.max(setBytes, 1))));
}

function timeCase(be: CudaBackend, c: BenchCase): number {
  return timeLaunchers(be, Array.from({ length: numSets(be, c.setBytes) }, () => c.make()));
}

/** us per launch: the launchers (one per input set) captured round-robin into one graph. */
function timeLaunchers(be: CudaBackend, launchers: (() => void)[]): number {
  const sets = launchers.length;
  launchers.forEach((l) => l());
  be.stream.synchronize();
  const iters = Math.ceil(ITERS / sets) * sets;
  be.beginCapture();
  for (let i = 0; i < iters; i++) launchers[i % sets]!();
  const graph = be.endCapture();
  const ms = medianMs(be, () => be.replay(graph));
  graph.dispose();
  return (ms * 1000) / iters;
}

function cases(be: CudaBackend): BenchCase[] {
  const out: BenchCase[] = [];
  const tokenCounts = quick ? [1, 256] : [1, 64, 256, 2048];
  for (const T of tokenCounts) {
    const act = T * HIDDEN * 2;
    out.push({
      op: 'rmsNorm+residual', shape: `${T}x${HIDDEN}`, bytes: 4 * act + HIDDEN * 2, flops: 0, setBytes: 4 * act,
      make: () => { const x = rand(be, [T, HIDDEN]), r = rand(be, [T, HIDDEN]), w = rand(be, [HIDDEN]), o = own(be.empty([T, HIDDEN], 'bf16')); return () => be.rmsNorm(o, x, w, 1e-5, T, r); },
    });
    out.push({
      op: 'siluMul', shape: `${T}x${FFN}`, bytes: 3 * T * FFN * 2, flops: 0, setBytes: 3 * T * FFN * 2,
      make: () => { const g = rand(be, [T, 2 * FFN]), o = own(be.empty([T, FFN], 'bf16')); return () => be.siluMul(o, g, T); },
    });
    out.push({
      op: 'embedding', shape: `${T}x${HIDDEN}`, bytes: 2 * act, flops: 0, setBytes: 2 * act,
      make: () => {
        const table = rand(be, [8192, HIDDEN]), o = own(be.empty([T, HIDDEN], 'bf16'));
        const ids = own(be.fromI32([T], Int32Array.from({ length: T }, (_, i) => (i * 7919) % 8192)));
        return () => be.embedding(o, table, ids, T);
      },
    });
    out.push({
      op: 'ropeWriteKv', shape: `${T} tok`, bytes: T * QKV * 2 + T * HEADS * HEAD_DIM * 2 + 2 * T * KV_HEADS * HEAD_DIM * 2, flops: 0, setBytes: T * QKV * 2 * 2,
      make: () => {
        const qkv = rand(be, [T, QKV]), cs = rand(be, [8192, HEAD_DIM], 'f32');
        const pos = own(be.fromI32([T], Int32Array.from({ length: T }, (_, i) => i)));
        const k = own(be.empty([T + 16, KV_HEADS * HEAD_DIM], 'bf16')), v = own(be.empty([T + 16, KV_HEADS * HEAD_DIM], 'bf16'));
        return () => be.ropeWriteKv(qkv, pos, cs, { k, v }, pos, T, { numHeads: HEADS, numKvHeads: KV_HEADS, headDim: HEAD_DIM, rotaryDim: HEAD_DIM, style: 'neox' });
      },
    });
    for (const [name, N, K, outF32] of LINEARS) {
      if (name.startsWith('lm_head') && T > 256) continue;
      const wBytes = N * K * 2;
      out.push({
        op: `gemm ${name}`, shape: `${T}x${N}x${K}`, bytes: wBytes + T * K * 2 + T * N * (outF32 ? 4 : 2), flops: 2 * T * N * K, setBytes: wBytes,
        make: () => { const x = rand(be, [T, K]), w = rand(be, [N, K], 'bf16', 0.02), o = own(be.empty([T, N], outF32 ? 'f32' : 'bf16')); return () => be.linear(o, x, w, null, T); },
      });
    }
  }
  const decodeShapes: [number, number][] = quick ? [[1, 4096], [64, 1024], [256, 1024]] : [[1, 1024], [1, 8192], [1, 32768], [8, 4096], [64, 1024], [64, 4096], [256, 1024], [256, 2048]];
  for (const [B, ctx] of decodeShapes) {
    const kvBytes = B * ctx * KV_HEADS * HEAD_DIM * 2 * 2;
    out.push({ op: 'attention decode', shape: `b${B} ctx${ctx}`, bytes: kvBytes, flops: 4 * B * ctx * HEADS * HEAD_DIM, setBytes: kvBytes, make: () => attentionCase(be, Array(B).fill(1), Array(B).fill(ctx)) });
  }
  for (const T of quick ? [2048] : [128, 512, 2048, 8192]) {
    const flops = 4 * HEADS * HEAD_DIM * ((T * (T + 1)) / 2);
    out.push({ op: 'attention prefill', shape: `1x${T}`, bytes: T * (QKV + HEADS * HEAD_DIM) * 2, flops, setBytes: T * QKV * 2 * 3, make: () => attentionCase(be, [T], [T]) });
  }
  out.push(...quantCases(be, (shape) => rand(be, shape), own)); // quantized linears: `--only qgemm`
  return out;
}

/** One layer's attention over a paged cache of exactly the needed blocks (in shuffled order). */
function attentionCase(be: CudaBackend, qLens: number[], kvLens: number[]): () => void {
  const numSeqs = qLens.length;
  const numTokens = qLens.reduce((a, b) => a + b, 0);
  const maxBlocksPerSeq = Math.ceil(Math.max(...kvLens) / BLOCK);
  const numBlocks = kvLens.reduce((a, k) => a + Math.ceil(k / BLOCK), 0);
  const order = Array.from({ length: numBlocks }, (_, i) => (i * 7919) % numBlocks);
  const tables = new Int32Array(numSeqs * maxBlocksPerSeq).fill(-1);
  let next = 0;
  kvLens.forEach((k, s) => { for (let b = 0; b < Math.ceil(k / BLOCK); b++) tables[s * maxBlocksPerSeq + b] = order[next++]!; });
  const cu = new Int32Array(numSeqs + 1);
  qLens.forEach((q, s) => { cu[s + 1] = cu[s]! + q; });
  const k = rand(be, [numBlocks * BLOCK, KV_HEADS * HEAD_DIM]);
  const v = rand(be, [numBlocks * BLOCK, KV_HEADS * HEAD_DIM]);
  const qkv = rand(be, [numTokens, QKV]);
  const o = own(be.empty([numTokens, HEADS * HEAD_DIM], 'bf16'));
  const meta: AttentionMetadata = {
    numSeqs, numTokens, maxBlocksPerSeq,
    cuSeqlensQ: own(be.fromI32([numSeqs + 1], cu)),
    contextLens: own(be.fromI32([numSeqs], Int32Array.from(kvLens))),
    blockTables: own(be.fromI32([numSeqs, maxBlocksPerSeq], tables)),
    maxSeqlenQ: Math.max(...qLens), maxSeqlenK: Math.max(...kvLens), isDecode: qLens.every((q) => q === 1),
  };
  const p = { numHeads: HEADS, numKvHeads: KV_HEADS, headDim: HEAD_DIM, blockSize: BLOCK, scale: 1 / Math.sqrt(HEAD_DIM) };
  return () => be.attention(o, qkv, { k, v }, meta, p);
}

/**
 * Decode-shaped linears (bf16 weights, M = 1..16 rows): cuBLASLt, the GEMV with its default
 * plan and the fastest of every plan, and the ring-buffered GEMV (PEREGRINE_GEMV=ring; up to 8
 * rows whose x fits a block), each as us and % of copy bandwidth; which one `linear` takes.
 */
function gemvVsCublas(be: CudaBackend, copyTbs: number): void {
  const ctx = { kernels: be.kernels, stream: be.stream, numSMs: be.props.numSMs, maxSharedBytesPerBlock: be.props.maxSharedBytesPerBlock };
  const head = ['linear', 'M x N x K', 'linear takes', 'cuBLASLt us', '% copy', 'GEMV us', 'GB/s', '% copy', 'vs cuBLASLt', 'plan', 'best plan', 'best us', '% copy', 'ring us', '% copy'];
  const body: string[][] = [];
  const pct = (bytes: number, us: number): string => ((100 * bytes) / us / 1e6 / copyTbs).toFixed(0);
  const enabled = gemvPolicy.enabled;
  for (const [name, N, K, outF32] of LINEARS) {
    const outDtype = outF32 ? 'f32' : 'bf16';
    const ws = Array.from({ length: numSets(be, N * K * 2) }, () => rand(be, [N, K], 'bf16', 0.02));
    const x = rand(be, [GEMV_ROWS.at(-1)!, K]) as CudaTensor;
    const o = own(be.empty([GEMV_ROWS.at(-1)!, N], outDtype)) as CudaTensor;
    for (const M of GEMV_ROWS) {
      const bytes = N * K * 2 + M * K * 2 + M * N * (outF32 ? 4 : 2);
      gemvPolicy.enabled = false; // linear -> cuBLASLt
      const blasUs = timeLaunchers(be, ws.map((w) => () => be.linear(o, x, w, null, M)));
      gemvPolicy.enabled = enabled;
      const timePlan = (plan: GemvPlan): number =>
        timeLaunchers(be, ws.map((w) => () => gemv(ctx, { out: o.ptr, outDtype, x: x.ptr, w: (w as CudaTensor).ptr, dtype: 'bf16', bias: null, biasDtype: null, M, N, K }, plan)));
      const auto = gemvPlan(K, M);
      const gemvUs = timePlan(auto);
      let best = { plan: auto, us: gemvUs };
      for (const plan of gemvPlans(M)) {
        const us = timePlan(plan);
        if (us < best.us) best = { plan, us };
      }
      const ringOk = M <= QGEMV_MAX_M && K % 32 === 0 && qgemvChunkM('dense', K, be.props.maxSharedBytesPerBlock) >= M;
      const ringUs = ringOk ? timeLaunchers(be, ws.map((w) => () => ringGemv(ctx, { out: o.ptr, outDtype, x: x.ptr, w: (w as CudaTensor).ptr, dtype: 'bf16', bias: null, biasDtype: null, M, N, K }))) : NaN;
      body.push([
        name, `${M}x${N}x${K}`, gemvTakes(M, N, K, outDtype) ? 'GEMV' : 'cuBLASLt', blasUs.toFixed(1), pct(bytes, blasUs), gemvUs.toFixed(1), (bytes / gemvUs / 1e3).toFixed(0), pct(bytes, gemvUs),
        `${(blasUs / gemvUs).toFixed(2)}x`, gemvPlanName(auto), gemvPlanName(best.plan), best.us.toFixed(1), pct(bytes, best.us),
        ringOk ? ringUs.toFixed(1) : '-', ringOk ? pct(bytes, ringUs) : '-',
      ]);
    }
    for (const t of live.splice(0)) be.free(t);
  }
  console.log(`\n# decode-shaped linears, bf16: cuBLASLt vs GEMV (plan w = warps per block, u = 32-k chunks per load step); % of ${copyTbs.toFixed(2)} TB/s copy`);
  printCells(head, body);
}

function printTable(rows: Row[], copyTbs: number): void {
  const head = ['op', 'shape', 'us', 'TB/s', '% copy', 'TFLOP/s'];
  printCells(head, rows.map((r) => [r.op, r.shape, r.us.toFixed(2), r.tbs.toFixed(2), ((100 * r.tbs) / copyTbs).toFixed(0), r.tflops ? r.tflops.toFixed(1) : '']));
}

/** A markdown table: the first two columns left-aligned, the rest right-aligned. */
function printCells(head: string[], body: string[][]): void {
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]): string => `| ${cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  console.log(line(head));
  console.log(`|${widths.map((w, i) => (i < 2 ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`);
  for (const b of body) console.log(line(b));
}

main();
