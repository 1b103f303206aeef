// The op profiler (src/bench/op-profiler.ts) and `bench latency --profile` on the CPU backend:
// every op lands in its row with the bytes it must move, the proxy changes no result, and a
// profiled decode step of a tiny checkpoint has the rows, counts and sums a step must have.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LLM } from '../src/api/llm.js';
import { CpuBackend, cpuData } from '../src/backends/cpu/cpu-backend.js';
import type { AttentionMetadata } from '../src/backends/backend.js';
import { latencyTables, runLatency } from '../src/bench/latency.js';
import { OpProfiler } from '../src/bench/op-profiler.js';
import { UsageError } from '../src/cli/args.js';
import { BENCH_HELP, runBench } from '../src/cli/bench.js';
import { writeTinyLlama } from './helpers/tiny-checkpoint.js';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'main.js');

const F32 = 4;

function rand(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) - 0.5);
}

test('each op is charged to its row (linears by weight name) with the bytes it must move; results are unchanged', async () => {
  const cpu = new CpuBackend();
  const w = cpu.fromF32([5, 8], rand(40, 1));
  const other = cpu.fromF32([3, 8], rand(24, 2));
  const prof = new OpProfiler(cpu, new Map([[w, 'qkv_proj']]));
  const b = prof.backend;
  const x = b.fromF32([3, 8], rand(24, 3));
  const out = b.empty([3, 5], 'f32'), out2 = b.empty([3, 3], 'f32'), normed = b.empty([3, 8], 'f32');
  const residual = b.fromF32([3, 8], rand(24, 4)), normW = b.fromF32([8], rand(8, 5));
  b.linear(out, x, w, null, 3);
  const plain = cpu.empty([3, 5], 'f32');
  cpu.linear(plain, x, w, null, 3);
  assert.deepEqual(cpuData(out), cpuData(plain), 'the proxy returns what the backend computes');
  b.linear(out, x, w, null, 2);
  b.linear(out2, x, other, null, 3);
  b.rmsNorm(normed, x, normW, 1e-5, 3, residual);

  const rows = await prof.collect();
  assert.deepEqual(rows.map((r) => [r.op, r.calls]), [['qkv_proj', 2], ['linear (other)', 1], ['norm', 1]]);
  // weights + x rows + out rows, f32
  assert.equal(rows[0]!.bytes, (40 + 24 + 15 + 40 + 16 + 10) * F32);
  assert.equal(rows[1]!.bytes, (24 + 24 + 9) * F32);
  // x + out + residual read and written + weight
  assert.equal(rows[2]!.bytes, (24 + 24 + 48 + 8) * F32);
  for (const r of rows) assert.ok(r.ms >= 0 && Number.isFinite(r.ms), `${r.op}: ${r.ms} ms`);
  assert.deepEqual(prof.linears.map((l) => [l.op, l.M, l.N, l.K, l.weights.length]), [['qkv_proj', 2, 5, 8, 1], ['linear (other)', 3, 3, 8, 1]]);

  cpu.writeF32(out, new Float32Array(15));
  prof.replay('qkv_proj'); // the collected run's two calls again (3 rows, then 2), untimed
  assert.deepEqual(cpuData(out), cpuData(plain));
  cpu.writeF32(out2, new Float32Array(9));
  prof.replay('norm');
  assert.deepEqual([...cpuData(out2)], Array(9).fill(0), 'a replay issues only its row');
  assert.deepEqual(await prof.collect(), [], 'collect forgets what it returned; a replay is not recorded');
  prof.enabled = false;
  b.linear(out, x, w, null, 3);
  assert.deepEqual(await prof.collect(), [], 'a disabled profiler records nothing');
  prof.dispose();
});

test('attention rows count the K and V rows of every sequence context once, plus q and out', async () => {
  const cpu = new CpuBackend();
  const prof = new OpProfiler(cpu);
  const b = prof.backend;
  const numHeads = 2, numKvHeads = 2, headDim = 4, blockSize = 4;
  const kvWidth = numKvHeads * headDim;
  const cache = { k: b.fromF32([12, kvWidth], rand(12 * kvWidth, 6)), v: b.fromF32([12, kvWidth], rand(12 * kvWidth, 7)) };
  const qkv = b.fromF32([2, (numHeads + 2 * numKvHeads) * headDim], rand(48, 8));
  const out = b.empty([2, numHeads * headDim], 'f32');
  const meta: AttentionMetadata = {
    numSeqs: 2, numTokens: 2, cuSeqlensQ: b.fromI32([3], Int32Array.from([0, 1, 2])), contextLens: b.fromI32([2], Int32Array.from([3, 5])),
    blockTables: b.fromI32([2, 2], Int32Array.from([0, -1, 1, 2])), maxBlocksPerSeq: 2, maxSeqlenQ: 1, maxSeqlenK: 5, isDecode: true,
  };
  prof.contextLens = [3, 5];
  b.attention(out, qkv, cache, meta, { numHeads, numKvHeads, headDim, blockSize, scale: 0.5 });
  const [row] = await prof.collect();
  assert.equal(row!.op, 'attention');
  assert.equal(row!.bytes, (2 * 2 * numHeads * headDim + (3 + 5) * 2 * kvWidth) * F32);
  prof.dispose();
});

test('bench latency --profile on the CPU: per-op rows of a decode step with plausible counts, bytes and sums', async () => {
  const H = 64, L = 2, nh = 4, nkv = 2, F = 128, V = 256, hd = H / nh;
  const dir = writeTinyLlama({ hidden: H, layers: L, heads: nh, kvHeads: nkv, ffn: F, vocab: V });
  const llm = await LLM.load(dir, { device: 'cpu', maxNumSeqs: 4, maxNumBatchedTokens: 32, maxModelLen: 32 });
  try {
    const isl = 8, osl = 3;
    const res = await runLatency(llm, { batchSizes: [1, 3], isl, osl, prefillLens: [], profile: true });
    assert.equal(res.profiles?.length, 2);
    for (const p of res.profiles!) {
      const B = p.numRows;
      assert.equal(B, p.numSeqs, 'no graphs on the CPU: no padding');
      const by = new Map(p.ops.map((o) => [o.op, o]));
      for (const op of ['embedding', 'norm', 'qkv_proj', 'rope + kv write', 'attention', 'o_proj', 'gate_up_proj', 'activation', 'down_proj', 'lm_head']) {
        assert.ok(by.has(op), `batch ${B}: no "${op}" row in ${[...by.keys()].join(', ')}`);
      }
      for (const op of ['qkv_proj', 'o_proj', 'gate_up_proj', 'down_proj', 'rope + kv write', 'attention', 'activation']) assert.equal(by.get(op)!.calls, L, op);
      assert.equal(by.get('norm')!.calls, 2 * L + 1);
      assert.equal(by.get('lm_head')!.calls, 1);
      assert.equal(by.get('gate_up_proj')!.bytes, L * (2 * F * H + B * H + B * 2 * F) * F32);
      assert.equal(by.get('lm_head')!.bytes, (V * H + B * H + B * V) * F32);
      // each sequence holds isl + osl tokens once the profiled step's K and V are written
      assert.equal(by.get('attention')!.bytes, L * (2 * B * nh * hd + B * (isl + osl) * 2 * nkv * hd) * F32);
      const sum = p.ops.reduce((s, o) => s + o.ms, 0);
      assert.ok(Math.abs(sum - p.forwardMs) < 1e-9, 'forwardMs is the sum of the rows');
      assert.ok(p.forwardMs > 0 && p.spanMs >= p.forwardMs, `wall ${p.spanMs} ms holds the ops' ${p.forwardMs} ms`);
      assert.ok(p.sampleMs > 0 && p.uploadMs >= 0 && p.packedUploadMs >= 0);
      assert.equal(p.graphMs, null);
      assert.deepEqual(p.gemms, []);
    }
    const text = latencyTables(res);
    for (const s of ['decode step profile (cpu', 'batch 1,', 'batch 3,', '| qkv_proj', '| lm_head', '| attention', 'sum of ops', 'input uploads', 'sampling', 'runner step']) {
      assert.ok(text.includes(s), `the tables lack "${s}"`);
    }
  } finally {
    await llm.close();
  }
});

test('the CLI takes --profile and prints the profile after the latency tables', async () => {
  assert.match(BENCH_HELP, /--profile/);
  const dir = writeTinyLlama({ layers: 1 });
  // a child process: replacing this process's stdout.write would also swallow the test reporter's lines
  const r = spawnSync(process.execPath, [CLI, 'bench', 'latency', '--model', dir, '--device', 'cpu', '--batch', '2', '--isl', '8', '--osl', '3', '--prefill', '8', '--profile'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr);
  const printed = r.stdout;
  const at = printed.indexOf('decode step profile');
  assert.ok(at > printed.indexOf('prefill tokens') && printed.indexOf('prefill tokens') > 0, printed);
  assert.match(printed.slice(at), /\| gate_up_proj +\| 1 /);
  // the prefill row's time to first token through the engine: a number, at least the forward's own time
  const row = /\| 8 +\| ([\d.]+) +\| [\d.e-]+ +\| ([\d.]+) +\|/.exec(printed);
  assert.ok(row && Number(row[2]) >= 0.5 * Number(row[1]), `prefill 8 row with TTFT: ${printed.slice(printed.indexOf('prefill tokens'), at)}`);
  // and the prefill step's own profile: linears with their arithmetic rate, the causal attention's too
  const pre = printed.indexOf('prefill step profile');
  assert.ok(pre > at, printed);
  assert.match(printed.slice(pre), /\| gate_up_proj +\| 1 +\| [\d.]+ +\| [\d.]+ +\| [\d.e-]+ +\|/);
  assert.match(printed.slice(pre), /\| attention +\| 1 +\| [\d.]+ +\| [\d.]+ +\| [\d.e-]+ +\|/);
  await assert.rejects(runBench(['latency', '--shape', 'tiny-llama', '--random-weights', '--tp', '2', '--profile']), (e: Error) => e instanceof UsageError && /--profile/.test(e.message));
});
