// `peregrine build` on the llama-linear golden fixture: the folder it writes is detected and loads,
// every linear weight dequantizes within its format's error bound of the original, everything else
// is copied byte for byte; sharding, refusals, the CLI; and the logits accuracy report.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Checkpoint, INDEX_FILE } from '../src/weights/checkpoint.js';
import { loadModelConfig } from '../src/models/config.js';
import { buildQuantizedCheckpoint, type BuildOptions } from '../src/weights/quant/build.js';
import { detectQuantization } from '../src/weights/quant/index.js';
import { readQuantizedLinear } from '../src/weights/quant/load.js';
import { dequantize } from '../src/weights/quant/dequantize.js';
import { numGroups, type HostQuantWeight } from '../src/weights/quant/types.js';
import { compareLogits, formatAccuracy } from '../src/weights/quant/accuracy.js';
import { runBuild } from '../src/cli/build.js';
import { UsageError } from '../src/cli/args.js';
import { isPeregrineError } from '../src/errors.js';
import { loadGolden } from './helpers/golden.js';
import { goldenRows, teacherForcedLogits } from './helpers/quantized-model.js';

const FIXTURE = 'llama-linear';
const g = loadGolden(FIXTURE);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pgn-quant-build-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));
let outCount = 0;

const LINEAR = /\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight$/;

async function build(opts: Omit<BuildOptions, 'modelDir' | 'outDir'>): Promise<{ out: string; result: Awaited<ReturnType<typeof buildQuantizedCheckpoint>> }> {
  const out = path.join(tmp, `out-${outCount++}`);
  const result = await buildQuantizedCheckpoint({ modelDir: g.dir, outDir: out, jobs: 1, ...opts });
  return { out, result };
}

/** the largest |w - w'| a weight element may have: E4M3 half a step, INT half a scale */
function bound(h: HostQuantWeight, n: number, k: number, w: number): number {
  const [, K] = h.shape;
  const s = h.scales.length === 1 ? h.scales[0]! : h.scales[n * numGroups(K, h.groupSize) + Math.floor(k / h.groupSize)]!;
  const f32 = Math.abs(w) * 2 ** -23;
  return h.kind === 'fp8' ? Math.max(Math.abs(w) * 2 ** -4, s * 2 ** -10) + f32 : s / 2 + f32;
}

const KINDS: [string, Omit<BuildOptions, 'modelDir' | 'outDir'>, string][] = [
  ['fp8 per tensor', { kind: 'fp8' }, 'compressed-tensors'],
  ['fp8 per channel', { kind: 'fp8', fp8Scale: 'channel' }, 'compressed-tensors'],
  ['int8', { kind: 'int8' }, 'compressed-tensors'],
  ['int4 (groups of 128: one partial group of 64 here)', { kind: 'int4' }, 'gptq'],
  ['int4 asymmetric, group 32, two workers', { kind: 'int4', symmetric: false, groupSize: 32, jobs: 2 }, 'gptq'],
];

for (const [label, opts, method] of KINDS) {
  test(`build ${label}: detected, loads, every linear within its error bound, the rest copied`, async () => {
    const { out, result } = await build(opts);
    assert.equal(result.numQuantized, 14); // 2 layers x q, k, v, o, gate, up, down
    assert.deepEqual(result.skipped, []);
    const { raw, spec } = loadModelConfig(out);
    assert.equal(spec.architecture, 'LlamaForCausalLM');
    const cfg = detectQuantization(raw)!;
    assert.deepEqual([cfg.method, cfg.kind], [method, opts.kind]);
    assert.ok(fs.existsSync(path.join(out, 'generation_config.json')), 'generation_config.json copied');
    const src = Checkpoint.open(g.dir);
    const dst = Checkpoint.open(out);
    try {
      for (const name of src.names()) {
        if (!LINEAR.test(name)) {
          assert.deepEqual(dst.read(name).bytes, src.read(name).bytes, `${name} copied as stored`);
          continue;
        }
        const h = readQuantizedLinear(dst, name, cfg);
        assert.ok(h, `${name} is quantized`);
        assert.equal(h.kind, opts.kind);
        const w = src.readF32(name);
        assert.deepEqual([...h.shape], src.info(name).shape);
        const deq = dequantize(h);
        const K = h.shape[1];
        for (let i = 0; i < w.length; i++) {
          const n = Math.floor(i / K), k = i % K;
          assert.ok(Math.abs(deq[i]! - w[i]!) <= bound(h, n, k, w[i]!), `${name}[${n}, ${k}]: ${deq[i]} vs ${w[i]}`);
        }
      }
    } finally {
      src.close();
      dst.close();
    }
  });
}

test('build writes shards and an index past --max-shard-size, and they load', async () => {
  const { out, result } = await build({ kind: 'int8', maxShardBytes: 64 * 1024 });
  assert.ok(result.files.includes(INDEX_FILE));
  const shards = fs.readdirSync(out).filter((f) => f.endsWith('.safetensors'));
  assert.ok(shards.length > 1 && shards.every((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f)), shards.join(', '));
  const ckpt = Checkpoint.open(out);
  assert.ok(readQuantizedLinear(ckpt, 'model.layers.1.mlp.down_proj.weight', detectQuantization(loadModelConfig(out).raw)));
  ckpt.close();
});

test('build refuses a non-empty output folder, the model folder itself, and an already quantized model', async () => {
  const { out } = await build({ kind: 'fp8' });
  await assert.rejects(buildQuantizedCheckpoint({ modelDir: g.dir, outDir: out, kind: 'int8', jobs: 1 }), (e: unknown) =>
    isPeregrineError(e, 'PGN_ERR_INVALID_ARGUMENT') && e.message.includes(out) && e.message.includes('--overwrite'));
  await buildQuantizedCheckpoint({ modelDir: g.dir, outDir: out, kind: 'int8', jobs: 1, overwrite: true });
  assert.equal(detectQuantization(loadModelConfig(out).raw)!.kind, 'int8');
  await assert.rejects(buildQuantizedCheckpoint({ modelDir: g.dir, outDir: g.dir, kind: 'fp8' }), (e: unknown) => isPeregrineError(e, 'PGN_ERR_INVALID_ARGUMENT'));
  await assert.rejects(buildQuantizedCheckpoint({ modelDir: out, outDir: path.join(tmp, 'again'), kind: 'fp8', jobs: 1 }), (e: unknown) =>
    isPeregrineError(e, 'PGN_ERR_UNSUPPORTED_FEATURE') && e.message.includes('already quantized'));
});

test('peregrine build CLI: flags, usage errors', async () => {
  const out = path.join(tmp, `cli-${outCount++}`);
  // a child process: replacing this process's stdout.write would also swallow the test reporter's lines
  const cli = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'main.js');
  const r = spawnSync(process.execPath, [cli, 'build', '--model', g.dir, '--quantization', 'int4', '--asym', '--group-size', '32', '--jobs', '1', '-o', out], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /14 linear weights quantized to int4/);
  const qc = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).quantization_config;
  assert.deepEqual([qc.quant_method, qc.bits, qc.group_size, qc.sym, qc.desc_act], ['gptq', 4, 32, false, false]);
  await assert.rejects(runBuild(['--model', g.dir, '--quantization', 'int3', '-o', out]), (e: unknown) => e instanceof UsageError && /int3/.test(e.message));
  await assert.rejects(runBuild(['--model', g.dir, '--quantization', 'fp8', '--asym', '-o', out]), UsageError);
  await assert.rejects(runBuild(['--model', g.dir, '--quantization', 'fp8']), (e: unknown) => e instanceof UsageError && /--output/.test(e.message));
});

// Accuracy of the quantized fixture against its f32 self, teacher-forced over the golden prompts
// and greedy continuations (155 rows). The fixture has random weights, so its logits are nearly
// flat (top-1 margins down to 0.008) and a 2-layer random net amplifies weight noise about 4x into
// the logits; trained models have far larger margins, where the issue's >= 97% FP8 goal applies.
// Error model: per-element relative RMS error of E4M3 ~2.5% on weights and on activations,
// INT8 per channel ~0.5%, INT4 g128 ~10%; times the ~4x amplification the f32-vs-int8 run shows.
// Measured (CpuBackend): fp8 13.1% / 87% top-1, fp8 per channel 11.7% / 89%, int8 2.1% / 98%,
// int4 33.9% / 59%. The bounds are the measured values with about 1.5x headroom: a wrong scale or a
// packing slip breaks them by far (the exact per-linear math is checked in quant-linear.test.ts).
const ACCURACY: [string, Omit<BuildOptions, 'modelDir' | 'outDir'>, number, number][] = [
  ['fp8', { kind: 'fp8' }, 0.2, 0.75],
  ['fp8 per channel', { kind: 'fp8', fp8Scale: 'channel' }, 0.18, 0.75],
  ['int8', { kind: 'int8' }, 0.035, 0.93],
  ['int4', { kind: 'int4' }, 0.5, 0.45],
];

test('accuracy report: logits of the quantized fixture vs f32 (relative error, top-1 agreement)', async (t) => {
  const concat = (rows: Float32Array[]) => {
    const all = new Float32Array(rows.reduce((a, r) => a + r.length, 0));
    rows.reduce((off, r) => (all.set(r, off), off + r.length), 0);
    return all;
  };
  const base = concat(await teacherForcedLogits(g, null));
  const parity = compareLogits(concat(goldenRows(g)), base, g.vocabSize);
  assert.ok(parity.maxAbsError < 1e-3, 'the unquantized CPU run matches transformers');
  for (const [label, opts, maxRelError, minTop1] of ACCURACY) {
    const { out } = await build(opts);
    const acc = compareLogits(base, concat(await teacherForcedLogits(g, out)), g.vocabSize);
    t.diagnostic(formatAccuracy(`${FIXTURE} ${label}`, acc));
    assert.ok(acc.relError <= maxRelError, `${label}: relative error ${acc.relError} > ${maxRelError}`);
    assert.ok(acc.top1Agreement >= minTop1, `${label}: top-1 agreement ${acc.top1Agreement} < ${minTop1}`);
    assert.ok(acc.relError > 0, `${label}: the quantized run differs from f32 (the weights were swapped)`);
  }
});
