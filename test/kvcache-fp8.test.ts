/**
 * The FP8 (E4M3) KV cache on the CPU reference: codes of hand-computed values, attention over an
 * fp8 cache equal to attention over its dequantized rows, a model fixture against the 'auto' cache
 * (logits bound, greedy ids), the checkpoint's k/v scales, the memory accounting (twice the blocks
 * of bf16), and the errors for bad values.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LLM } from '../src/api/llm.js';
import { defaultNumKvBlocks } from '../src/api/llm-options.js';
import type { AttentionMetadata, Backend, LayerKvCache, Tensor } from '../src/backends/backend.js';
import { CpuBackend, cpuData } from '../src/backends/cpu/cpu-backend.js';
import { kvCacheDtypeArg, UsageError } from '../src/cli/args.js';
import { isPeregrineError } from '../src/errors.js';
import { loadModel } from '../src/models/load-model.js';
import type { ModelSpec } from '../src/models/spec.js';
import { KvCachePool, parseKvCacheDtype } from '../src/runner/kv-cache.js';
import { ModelRunner, type RunnerConfig } from '../src/runner/model-runner.js';
import { simpleGenerate } from '../src/runner/simple-generate.js';
import { Checkpoint } from '../src/weights/checkpoint.js';
import { writeSafetensors } from '../src/weights/safetensors-writer.js';
import { findKvScaleTensors, readKvCacheScalesInDir } from '../src/weights/quant/kv-scales.js';
import { E4M3_TO_F32 } from '../src/weights/quant/fp8.js';
import { chunkedPrefillLogits } from './helpers/chunked-prefill.js';
import { fixtureDir, loadGolden } from './helpers/golden.js';
import { rng, shuffled, uniform } from './helpers/random.js';

const be = new CpuBackend();
const bytesOf = (t: Tensor): Uint8Array => {
  const w = cpuData(t) as Int32Array;
  return new Uint8Array(w.buffer, w.byteOffset, w.byteLength);
};
const f32 = (t: Tensor): Float32Array => cpuData(t) as Float32Array;

/** the smallest spec KvCachePool reads */
function kvSpec(numLayers: number, numKvHeads: number, headDim: number): ModelSpec {
  return { numLayers, numKvHeads, headDim } as ModelSpec;
}

test('E4M3 codes of hand-computed values, through ropeWriteKv and back through attention', () => {
  // x / kScale with kScale 2 -> code: 0, 1 (e=7), -2 (sign, e=8), 448 = max, 1000 saturates to max,
  // 2^-9 the smallest subnormal, 1.0625 halfway 1 | 1.125 -> even (1), 1.1875 halfway 1.125 | 1.25 -> even (1.25),
  // 0.3 = 1.2 * 2^-2 -> 1.25 * 2^-2 (m 1.6 rounds to 2)
  const values = [0, 1, -2, 448, 1000, 2 ** -9, 1.0625, 1.1875, 0.3, -0.3, 5e-4, 3 * 2 ** -9];
  const codes = [0x00, 0x38, 0xc0, 0x7e, 0x7e, 0x01, 0x38, 0x3a, 0x2a, 0xaa, 0x00, 0x03];
  const headDim = values.length, kScale = 2, vScale = 0.25;
  const pool = new KvCachePool(be, kvSpec(1, 1, headDim), 2, 4, { dtype: 'fp8', scales: [{ kScale, vScale }] });
  const cache = pool.layers[0]!;
  assert.deepEqual([cache.dtype, cache.kScale, cache.vScale, cache.k.dtype, cache.k.shape], ['fp8', 2, 0.25, 'i32', [8, headDim / 4]]);
  // one token: q | k | v, written to slot 4 = block 1, offset 0 (no rotation)
  const qkv = be.fromF32([1, 3 * headDim], Float32Array.from([...values, ...values.map((x) => x * kScale), ...values.map((x) => x * vScale)]));
  bytesOf(cache.k).fill(0);
  be.ropeWriteKv(qkv, be.fromI32([1], Int32Array.of(0)), null, cache, be.fromI32([1], Int32Array.of(4)), 1, { numHeads: 1, numKvHeads: 1, headDim, rotaryDim: headDim, style: 'neox' });
  assert.deepEqual([...bytesOf(cache.k).subarray(4 * headDim, 5 * headDim)], codes);
  assert.deepEqual([...bytesOf(cache.v).subarray(4 * headDim, 5 * headDim)], codes);
  assert.ok(bytesOf(cache.k).every((b, i) => b === 0 || (i >= 4 * headDim && i < 5 * headDim)), 'other slots untouched');
  // one key: the attention output is that value row, dequantized (code * vScale)
  const out = be.empty([1, headDim], 'f32');
  const meta: AttentionMetadata = {
    numSeqs: 1, numTokens: 1, maxBlocksPerSeq: 1, maxSeqlenQ: 1, maxSeqlenK: 1, isDecode: true,
    cuSeqlensQ: be.fromI32([2], Int32Array.of(0, 1)), contextLens: be.fromI32([1], Int32Array.of(1)), blockTables: be.fromI32([1, 1], Int32Array.of(1)),
  };
  be.attention(out, qkv, cache, meta, { numHeads: 1, numKvHeads: 1, headDim, blockSize: 4, scale: 1 });
  const expected = codes.map((c) => E4M3_TO_F32[c]! * vScale);
  assert.deepEqual([...f32(out)], expected.map((x) => Math.fround(x)));
  pool.dispose();
});

/** Random paged attention: the fp8 cache vs an f32 cache holding the same rows, original or dequantized. */
function attentionCase(seed: number, headDim: number, numHeads: number, numKvHeads: number, seqs: readonly (readonly [number, number])[]) {
  const r = rng(seed);
  const blockSize = 8, kvWidth = numKvHeads * headDim;
  const numBlocks = seqs.reduce((a, [, k]) => a + Math.ceil(k / blockSize), 0) + 2;
  const maxBlocksPerSeq = Math.max(...seqs.map(([, k]) => Math.ceil(k / blockSize)));
  const pool = shuffled(numBlocks, r);
  const tables = new Int32Array(seqs.length * maxBlocksPerSeq).fill(-1);
  let next = 0;
  seqs.forEach(([, k], s) => { for (let b = 0; b < Math.ceil(k / blockSize); b++) tables[s * maxBlocksPerSeq + b] = pool[next++]!; });
  const numTokens = seqs.reduce((a, [q]) => a + q, 0);
  const rows = numBlocks * blockSize;
  const kRef = uniform(rows * kvWidth, r, 2), vRef = uniform(rows * kvWidth, r, 2);
  const kScale = 0.01, vScale = 0.02; // |k| / kScale <= 200 and |v| / vScale <= 100: no saturation
  const fp8 = new KvCachePool(be, kvSpec(1, numKvHeads, headDim), numBlocks, blockSize, { dtype: 'fp8', scales: [{ kScale, vScale }] }).layers[0]!;
  // write every row through ropeWriteKv (q unused, no rotation)
  const qkvAll = new Float32Array(rows * (numHeads + 2 * numKvHeads) * headDim);
  const rowW = (numHeads + 2 * numKvHeads) * headDim, qW = numHeads * headDim;
  for (let i = 0; i < rows; i++) {
    qkvAll.set(kRef.subarray(i * kvWidth, (i + 1) * kvWidth), i * rowW + qW);
    qkvAll.set(vRef.subarray(i * kvWidth, (i + 1) * kvWidth), i * rowW + qW + kvWidth);
  }
  be.ropeWriteKv(be.fromF32([rows, rowW], qkvAll), be.fromI32([rows], new Int32Array(rows)), null, fp8, be.fromI32([rows], Int32Array.from({ length: rows }, (_, i) => i)), rows, { numHeads, numKvHeads, headDim, rotaryDim: headDim, style: 'neox' });
  const kDq = Float32Array.from(bytesOf(fp8.k), (b) => E4M3_TO_F32[b]! * kScale);
  const vDq = Float32Array.from(bytesOf(fp8.v), (b) => E4M3_TO_F32[b]! * vScale);
  const cuQ = new Int32Array(seqs.length + 1);
  seqs.forEach(([q], s) => { cuQ[s + 1] = cuQ[s]! + q; });
  const meta: AttentionMetadata = {
    numSeqs: seqs.length, numTokens, maxBlocksPerSeq, maxSeqlenQ: Math.max(...seqs.map(([q]) => q)), maxSeqlenK: Math.max(...seqs.map(([, k]) => k)), isDecode: seqs.every(([q]) => q === 1),
    cuSeqlensQ: be.fromI32([seqs.length + 1], cuQ), contextLens: be.fromI32([seqs.length], Int32Array.from(seqs, ([, k]) => k)), blockTables: be.fromI32([seqs.length, maxBlocksPerSeq], tables),
  };
  const qkv = be.fromF32([numTokens, rowW], uniform(numTokens * rowW, r));
  const p = { numHeads, numKvHeads, headDim, blockSize, scale: 1 / Math.sqrt(headDim) };
  const run = (cache: LayerKvCache): Float32Array => {
    const out = be.empty([numTokens, qW], 'f32');
    be.attention(out, qkv, cache, meta, p);
    return f32(out);
  };
  return {
    fp8: run(fp8),
    dequantized: run({ k: be.fromF32([rows, kvWidth], kDq), v: be.fromF32([rows, kvWidth], vDq) }),
    exact: run({ k: be.fromF32([rows, kvWidth], kRef), v: be.fromF32([rows, kvWidth], vRef) }),
  };
}

function relL2(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) { num += (a[i]! - b[i]!) ** 2; den += b[i]! ** 2; }
  return Math.sqrt(num / den);
}

test('attention over an fp8 cache is attention over its dequantized rows; E4M3 error stays within bound', () => {
  for (const [headDim, numHeads, numKvHeads] of [[16, 4, 2], [32, 6, 1], [8, 2, 2]] as const) {
    const res = attentionCase(headDim * 31 + numHeads, headDim, numHeads, numKvHeads, [[5, 5], [1, 30], [7, 19]]);
    assert.ok(relL2(res.fp8, res.dequantized) < 1e-6, `D=${headDim}: fp8 path differs from the dequantized rows by ${relL2(res.fp8, res.dequantized)}`);
    // E4M3 keeps 3 mantissa bits: each element is off by at most 2^-4 of itself, ~3.6% rms for
    // uniform rounding; averaging over keys only shrinks that, so the output is well under 6%
    const err = relL2(res.fp8, res.exact);
    assert.ok(err > 1e-4 && err < 0.06, `D=${headDim}: fp8 vs exact attention relative L2 ${err}`);
  }
});

/** runner config for teacher-forced forwards over the fixtures */
const RUNNER: RunnerConfig = { numBlocks: 48, blockSize: 16, maxModelLen: 128, maxNumBatchedTokens: 256, maxNumSeqs: 8, maxNumLogits: 128 };

/** max |logit error| / max |logit| allowed between the fp8 and auto caches (justified below) */
const FP8_LOGIT_REL_TOL = 0.15;

test('a model fixture with the fp8 KV cache: logits near the auto path, greedy ids equal wherever the margin is clear', async () => {
  const g = loadGolden('llama-gqa-llama3');
  const { spec, weights } = loadModel(g.dir, be);
  const V = spec.vocabSize;
  const auto = new ModelRunner(be, spec, weights, RUNNER);
  const fp8 = new ModelRunner(be, spec, weights, { ...RUNNER, kvCache: { dtype: 'fp8' } });
  assert.equal(fp8.kvCache.dtype, 'fp8');
  let worst = 0, agree = 0, total = 0;
  for (const c of g.cases) {
    // prompt + continuation in two chunks, so the second reads the first from the cache
    const ids = [...c.promptIds, ...c.greedyIds.slice(0, -1)];
    const rest = ids.length - Math.floor(ids.length / 2);
    const a = await chunkedPrefillLogits(auto, ids), b = await chunkedPrefillLogits(fp8, ids);
    let scale = 0;
    for (const x of a) scale = Math.max(scale, Math.abs(x));
    for (let row = 0; row < rest; row++) {
      const ra = a.subarray(row * V, (row + 1) * V), rb = b.subarray(row * V, (row + 1) * V);
      let err = 0;
      for (let i = 0; i < V; i++) err = Math.max(err, Math.abs(ra[i]! - rb[i]!));
      worst = Math.max(worst, err / scale);
      // a step whose top-2 margin exceeds twice the error is decided by the model, not the rounding
      if (margin(ra) > 2 * err) {
        total++;
        if (argmax(ra) === argmax(rb)) agree++;
      }
    }
  }
  // E4M3 rounds each K/V element by at most 2^-4 of itself (~3.6% rms); attention outputs move by a
  // few % (test above), and these tiny random models (flat logits, no outliers to absorb it) carry
  // that through o_proj and the MLPs: ~8-11% of the logit range was seen on the fixtures
  assert.ok(worst > 0 && worst < FP8_LOGIT_REL_TOL, `max |logit error| / max |logit| = ${worst}`);
  assert.ok(total >= 40 && agree === total, `top-1 agrees at ${agree} of ${total} clearly decided steps`);
  // free-running greedy decoding: equal ids up to the first near-tie of the auto path
  const prompts = g.cases.map((c) => c.promptIds);
  const ga = await simpleGenerate(auto, prompts, { temperature: 0, maxTokens: 16, ignoreEos: true, keepLogits: true });
  const gb = await simpleGenerate(fp8, prompts, { temperature: 0, maxTokens: 16, ignoreEos: true });
  ga.tokenIds.forEach((ids, s) => {
    const k = ids.findIndex((t, i) => t !== gb.tokenIds[s]![i]);
    if (k < 0) return;
    const row = ga.stepLogits![s]![k]!;
    let scale = 0;
    for (const x of row) scale = Math.max(scale, Math.abs(x));
    assert.ok(margin(row) < 2 * FP8_LOGIT_REL_TOL * scale, `prompt ${s}: greedy ids differ at step ${k}, where auto's top-2 margin ${margin(row)} is clear`);
  });
  auto.dispose();
  fp8.dispose();
});

/** top-1 minus top-2 of a logits row */
function margin(row: Float32Array): number {
  let a = -Infinity, b = -Infinity;
  for (const x of row) {
    if (x > a) { b = a; a = x; } else if (x > b) b = x;
  }
  return a - b;
}

function argmax(row: Float32Array): number {
  let b = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[b]!) b = i;
  return b;
}

/** A copy of a fixture with KV scale tensors added in a second safetensors file (sharded index). */
function fixtureWithScales(name: string, tensors: Record<string, number[]>): string {
  const dir = mkdtempSync(join(tmpdir(), 'pgn-kvscale-'));
  cpSync(fixtureDir(name), dir, { recursive: true });
  const entries = Object.fromEntries(Object.entries(tensors).map(([n, v]) => [n, { dtype: 'F32' as const, shape: v.length === 1 ? [] : [v.length], data: new Uint8Array(Float32Array.from(v).buffer) }]));
  writeSafetensors(join(dir, 'kv-scales.safetensors'), entries);
  const ckpt = Checkpoint.open(fixtureDir(name));
  const weightMap = Object.fromEntries([...ckpt.names().map((n) => [n, 'model.safetensors']), ...Object.keys(tensors).map((n) => [n, 'kv-scales.safetensors'])]);
  ckpt.close();
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  return dir;
}

test('k/v scales of pre-quantized checkpoints: every spelling, per layer, max of several, 1.0 where absent', async () => {
  const names = [
    'model.layers.0.self_attn.k_scale', 'model.layers.0.self_attn.v_scale',
    'model.layers.1.self_attn.k_proj.output_scale', 'model.layers.1.self_attn.v_proj.output_scale',
    'model.layers.2.self_attn.kv_scale', 'model.layers.3.self_attn.k_proj.k_scale', 'model.layers.3.self_attn.v_proj.v_scale',
    'model.layers.3.self_attn.kv_scale', 'model.layers.0.self_attn.k_proj.weight_scale', 'model.layers.0.mlp.down_proj.input_scale',
  ];
  const found = findKvScaleTensors(names);
  assert.deepEqual([...found.keys()].sort(), [0, 1, 2, 3]);
  assert.equal(found.get(1)!.k, 'model.layers.1.self_attn.k_proj.output_scale');
  assert.deepEqual([found.get(2)!.k, found.get(2)!.v], ['model.layers.2.self_attn.kv_scale', 'model.layers.2.self_attn.kv_scale']);
  assert.deepEqual([found.get(3)!.k, found.get(3)!.v], ['model.layers.3.self_attn.k_proj.k_scale', 'model.layers.3.self_attn.v_proj.v_scale'], 'k_scale wins over kv_scale');

  const dir = fixtureWithScales('llama-gqa-llama3', { 'model.layers.0.self_attn.k_scale': [0.5], 'model.layers.0.self_attn.v_scale': [0.25, 0.75], 'model.layers.1.self_attn.kv_scale': [0.125] });
  assert.deepEqual(readKvCacheScalesInDir(dir, 2), [{ kScale: 0.5, vScale: 0.75 }, { kScale: 0.125, vScale: 0.125 }]);
  assert.equal(readKvCacheScalesInDir(fixtureDir('llama-gqa-llama3'), 2), null);
  const llm = await LLM.load(dir, { kvCacheDtype: 'fp8', maxNumSeqs: 2 });
  try {
    assert.equal(llm.kvCacheDtype, 'fp8');
    assert.deepEqual(llm.runner.kvCache.layers.map((l) => [l.kScale, l.vScale]), [[0.5, 0.75], [0.125, 0.125]]);
    const [out] = await llm.generate([[3, 17, 42, 99]], { temperature: 0, maxTokens: 4, ignoreEos: true });
    assert.equal(out!.outputs[0]!.tokenIds.length, 4);
  } finally {
    await llm.close();
  }
  const bad = fixtureWithScales('llama-gqa-llama3', { 'model.layers.1.self_attn.k_scale': [0] });
  await assert.rejects(LLM.load(bad, { kvCacheDtype: 'fp8' }), (e: unknown) =>
    isPeregrineError(e, 'PGN_ERR_INVALID_ARGUMENT') && /model\.layers\.1\.self_attn\.k_scale/.test(e.message) && /kv-scales\.safetensors/.test(e.message));
});

test('memory: fp8 blocks take half the bytes of bf16, so the same budget holds twice the blocks', async () => {
  const spec = { numLayers: 32, numKvHeads: 8, headDim: 128, hiddenSize: 4096, numHeads: 32, intermediateSize: 14336, vocabSize: 128256, maxPositionEmbeddings: 8192, rope: null } as unknown as ModelSpec;
  const gpu = { activationDtype: 'bf16', memoryInfo: () => ({ freeBytes: 40 * 2 ** 30, totalBytes: 80 * 2 ** 30 }) } as unknown as Backend;
  assert.equal(KvCachePool.bytesPerBlock(spec, 16, gpu, 'fp8') * 2, KvCachePool.bytesPerBlock(spec, 16, gpu));
  assert.equal(KvCachePool.bytesPerBlock(spec, 16, gpu, 'fp8'), 2 * 32 * 16 * 8 * 128);
  const lim = { blockSize: 16, maxModelLen: 2048, maxNumSeqs: 1024, maxNumBatchedTokens: 8192 };
  const auto = defaultNumKvBlocks(gpu, spec, lim, {});
  const fp8 = defaultNumKvBlocks(gpu, spec, lim, { kvCacheDtype: 'fp8' });
  assert.ok(auto > 1000 && Math.abs(fp8 - 2 * auto) <= 1, `auto ${auto} blocks, fp8 ${fp8}`);
  // end to end on the CPU (f32 activations: 4 bytes an element against 1)
  const dir = fixtureDir('llama-gqa-llama3');
  const opts = { kvCacheMemoryBytes: 2 ** 20, maxModelLen: 64, maxNumSeqs: 512 };
  const a = await LLM.load(dir, opts), b = await LLM.load(dir, { ...opts, kvCacheDtype: 'fp8' });
  try {
    assert.equal(a.kvCacheDtype, 'auto');
    assert.equal(b.runner.numBlocks, 4 * a.runner.numBlocks);
  } finally {
    await a.close();
    await b.close();
  }
});

test('unknown KV cache dtypes are typed errors naming the accepted values', async () => {
  assert.equal(parseKvCacheDtype(undefined), 'auto');
  assert.equal(parseKvCacheDtype('FP8_E4M3'), 'fp8');
  assert.throws(() => parseKvCacheDtype('fp8_e5m2'), (e: unknown) => isPeregrineError(e, 'PGN_ERR_INVALID_ARGUMENT') && /"fp8_e5m2"/.test(e.message) && /auto, fp8/.test(e.message));
  await assert.rejects(LLM.load(fixtureDir('llama-gqa-llama3'), { kvCacheDtype: 'int8' as never }), (e: unknown) => isPeregrineError(e, 'PGN_ERR_INVALID_ARGUMENT') && /int8/.test(e.message));
  assert.equal(kvCacheDtypeArg('fp8'), 'fp8');
  assert.equal(kvCacheDtypeArg(undefined), undefined);
  assert.throws(() => kvCacheDtypeArg('bf8'), (e: unknown) => e instanceof UsageError && /--kv-cache-dtype expects auto or fp8/.test(e.message) && /"bf8"/.test(e.message));
  assert.throws(() => new KvCachePool(be, kvSpec(1, 1, 6), 1, 16, { dtype: 'fp8' }), (e: unknown) => isPeregrineError(e, 'PGN_ERR_UNSUPPORTED_FEATURE') && /multiple of 4/.test(e.message));
});

test('CLI: generate --kv-cache-dtype fp8 runs; an unknown value is a usage error', () => {
  const cli = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'main.js');
  const run = (...args: string[]) => spawnSync(process.execPath, [cli, 'generate', '--model', fixtureDir('llama-gqa-llama3'), '--prompt-ids', '3,17,42', '--max-tokens', '4', '--temperature', '0', '--json', ...args], { encoding: 'utf8', timeout: 60_000 });
  const ok = run('--kv-cache-dtype', 'fp8');
  assert.equal(ok.status, 0, ok.stderr);
  assert.equal(JSON.parse(ok.stdout.trim().split('\n').at(-1)!).token_ids.length, 4);
  const bad = run('--kv-cache-dtype', 'fp16');
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /--kv-cache-dtype expects auto or fp8.*"fp16"/);
});

test('tensor parallel (2 CPU ranks) with the fp8 KV cache gives the one-rank greedy ids', async () => {
  const dir = fixtureDir('llama-gqa-llama3');
  const prompts = [[3, 17, 42, 99, 5, 6, 7], [1, 2, 3, 4]];
  const one = await LLM.load(dir, { kvCacheDtype: 'fp8', maxNumSeqs: 4 });
  const two = await LLM.load(dir, { kvCacheDtype: 'fp8', maxNumSeqs: 4, tp: 2 });
  try {
    assert.equal(two.kvCacheDtype, 'fp8');
    const params = { temperature: 0, maxTokens: 12, ignoreEos: true };
    const [a, b] = [await one.generate(prompts, params), await two.generate(prompts, params)];
    assert.deepEqual(b.map((o) => o.outputs[0]!.tokenIds), a.map((o) => o.outputs[0]!.tokenIds));
  } finally {
    await one.close();
    await two.close();
  }
});
