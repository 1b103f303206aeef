// Static FP8 activation scales from a calibration run (issue 6 point 1): the recorder notes max |x|
// of each linear's input (checked against a direct computation), `peregrine build --calibrate`
// writes compressed-tensors input_scale tensors and a static config that loads back, and the demo
// model's perplexity with static scales stays near the dynamic per-token FP8 build.
// Bound, measured on the demo model (2026-11-28; calibration on the first 4 windows of 128 tokens
// of heldout.txt, scoring on the next 8): dynamic FP8 31.088 -> static 30.922 is -0.53% here, and
// -0.08% over all 78 later windows (BF16 31.700, dynamic +0.40%, static +0.32%). Static scales 4x
// too small (saturating) cost +49% on the same windows, so +-1.5% keeps noise out and catches that.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { computePerplexity } from '../src/bench/perplexity.js';
import { loadModel } from '../src/models/load-model.js';
import { getFamily } from '../src/models/registry.js';
import { ModelRunner } from '../src/runner/model-runner.js';
import { Tokenizer } from '../src/tokenizer/tokenizer.js';
import { Checkpoint } from '../src/weights/checkpoint.js';
import { buildQuantizedCheckpoint } from '../src/weights/quant/build.js';
import { ActivationRecorder, amaxByTensor, inputScaleFor, linearKeys, runCalibration } from '../src/weights/quant/calibrate.js';
import { detectQuantization } from '../src/weights/quant/index.js';
import { linearTargets } from '../src/weights/quant/linear-targets.js';
import { readQuantizedLinear } from '../src/weights/quant/load.js';
import { FP8_E4M3_MAX } from '../src/weights/quant/fp8.js';
import { runBuild } from '../src/cli/build.js';
import { UsageError } from '../src/cli/args.js';
import { isPeregrineError } from '../src/errors.js';
import { fixtureDir } from './helpers/golden.js';

const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const DEMO = path.join(ROOT, 'models', 'demo');
const TEXT = path.join(ROOT, 'tools', 'demo-model', 'heldout.txt');
const WINDOW = 128;
const CALIB_WINDOWS = 4;
const SCORE_WINDOWS = 8;
const MAX_REL_PPL_CHANGE = 0.015;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pgn-calibrate-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));

function codeOf(e: unknown): string | undefined {
  return isPeregrineError(e) ? e.code : undefined;
}

/** max |RMSNorm(embed(id)) * w| over ids: the input of layer 0's q|k|v, computed in f64 from the checkpoint */
function layer0QkvInputAmax(dir: string, ids: readonly number[], eps: number): number {
  const ckpt = Checkpoint.open(dir);
  try {
    const embed = ckpt.readF32('model.embed_tokens.weight');
    const norm = ckpt.readF32('model.layers.0.input_layernorm.weight');
    const H = norm.length;
    let amax = 0;
    for (const id of ids) {
      const row = embed.subarray(id * H, (id + 1) * H);
      const inv = 1 / Math.sqrt(row.reduce((a, v) => a + v * v, 0) / H + eps);
      for (let h = 0; h < H; h++) amax = Math.max(amax, Math.abs(row[h]! * inv * norm[h]!));
    }
    return amax;
  } finally {
    ckpt.close();
  }
}

test('the recorder notes max |x| of the first numTokens rows per weight, over calls, and delegates', async () => {
  const b = new CpuBackend();
  const w = b.fromF32([3, 4], Float32Array.from({ length: 12 }, (_, i) => (i % 5) - 2));
  const other = b.fromF32([3, 4], new Float32Array(12).fill(1));
  const rec = new ActivationRecorder(b, new Map([[w, 'w']]));
  const x = b.fromF32([4, 4], Float32Array.of(1, -2, 0.5, 0, 0, 0, -3, 1, 99, 0, 0, 0, -99, 0, 0, 0)); // rows 2, 3 lie past numTokens
  const out = b.empty([4, 3], 'f32');
  const want = b.empty([4, 3], 'f32');
  rec.backend.linear(out, x, w, null, 2);
  b.linear(want, x, w, null, 2);
  assert.deepEqual((await b.downloadF32(out)).slice(0, 6), (await b.downloadF32(want)).slice(0, 6));
  rec.backend.linear(out, x, other, null, 4); // not a recorded weight
  await rec.flush();
  assert.deepEqual([...rec.amax], [['w', 3]]);
  b.writeF32(x, Float32Array.of(-7.5));
  rec.backend.linear(out, x, w, null, 1);
  await rec.flush();
  assert.equal(rec.amax.get('w'), 7.5);
});

test('calibrating llama-linear: layer 0 q|k|v amax equals the direct computation; packed parts share it', async () => {
  const dir = fixtureDir('llama-linear');
  const b = new CpuBackend();
  const m = loadModel(dir, b);
  const windowLen = 6, numWindows = 2;
  const ids = Array.from({ length: numWindows * windowLen }, (_, i) => (i * 37 + 11) % m.spec.vocabSize);
  const rec = new ActivationRecorder(b, linearKeys(m.spec, m.weights, true));
  await runCalibration(rec, m.spec, m.weights, ids, numWindows, windowLen, true);
  assert.equal(rec.amax.size, 2 * 4 + 1); // qkv, o, gate_up, down per layer, and lm_head
  const direct = layer0QkvInputAmax(dir, ids, m.spec.norm.eps);
  const got = rec.amax.get('layers.0.self_attn.qkv_proj.weight')!;
  assert.ok(Math.abs(got - direct) <= 1e-5 * direct, `recorded ${got}, direct ${direct}`);

  const ckpt = Checkpoint.open(dir);
  const map = getFamily(m.spec.architecture).weightMap(m.spec);
  const targets = linearTargets(ckpt, m.spec, map, true).names;
  ckpt.close();
  const byName = amaxByTensor(rec.amax, map, targets);
  assert.deepEqual([...byName.keys()].sort(), [...targets].sort());
  for (const p of ['q', 'k', 'v']) assert.equal(byName.get(`model.layers.0.self_attn.${p}_proj.weight`), got);
  assert.equal(byName.get('model.layers.1.mlp.gate_proj.weight'), byName.get('model.layers.1.mlp.up_proj.weight'));
  assert.equal(byName.get('model.layers.1.mlp.down_proj.weight'), rec.amax.get('layers.1.mlp.down_proj.weight'));
  assert.equal(byName.get('lm_head.weight'), rec.amax.get('lm_head.weight'));
});

const staticBuild = (async () => {
  const out = path.join(tmp, 'static');
  const result = await buildQuantizedCheckpoint({ modelDir: DEMO, outDir: out, kind: 'fp8', jobs: 1, calibration: { textFile: TEXT, numWindows: CALIB_WINDOWS, windowLen: WINDOW } });
  return { out, result };
})();
staticBuild.catch(() => {}); // awaited by the tests below

test('build --calibrate writes input_scale tensors and a static config that loads back', async () => {
  const { out, result } = await staticBuild;
  assert.equal(result.numQuantized, 4 * 7);
  assert.equal(result.numInputScales, result.numQuantized);
  const raw = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
  const cfg = detectQuantization(raw)!;
  assert.deepEqual([cfg.method, cfg.kind, cfg.activation], ['compressed-tensors', 'fp8', 'static']);
  const act = (raw['quantization_config'] as { config_groups: Record<string, { input_activations: Record<string, unknown> }> }).config_groups['group_0']!.input_activations;
  assert.deepEqual([act['dynamic'], act['strategy'], act['type'], act['num_bits']], [false, 'tensor', 'float', 8]);

  const ckpt = Checkpoint.open(out);
  try {
    const scaleOf = (module: string) => {
      const info = ckpt.info(`${module}.input_scale`);
      assert.deepEqual([info.dtype, [...info.shape]], ['F32', [1]]);
      return ckpt.readF32(`${module}.input_scale`)[0]!;
    };
    for (let i = 0; i < 4; i++) {
      const attn = `model.layers.${i}.self_attn`, mlp = `model.layers.${i}.mlp`;
      assert.equal(scaleOf(`${attn}.k_proj`), scaleOf(`${attn}.q_proj`));
      assert.equal(scaleOf(`${attn}.v_proj`), scaleOf(`${attn}.q_proj`));
      assert.equal(scaleOf(`${mlp}.up_proj`), scaleOf(`${mlp}.gate_proj`));
      for (const s of [scaleOf(`${attn}.o_proj`), scaleOf(`${mlp}.down_proj`), scaleOf(`${attn}.q_proj`)]) assert.ok(s > 0 && Number.isFinite(s));
    }
    const qkv = ['q', 'k', 'v'].map((p) => `model.layers.0.self_attn.${p}_proj.weight`);
    const h = readQuantizedLinear(ckpt, qkv, cfg)!;
    assert.equal(h.inputScale, scaleOf('model.layers.0.self_attn.q_proj'));
    // the scale is the recorded amax / 448 rounded up: the first windows' layer-0 input, computed directly
    const tok = await Tokenizer.load(DEMO);
    const ids = tok.encode(fs.readFileSync(TEXT, 'utf8')).slice(0, CALIB_WINDOWS * WINDOW);
    const direct = layer0QkvInputAmax(DEMO, ids, 1e-5);
    assert.ok(Math.abs(h.inputScale! - inputScaleFor(direct)) <= 1e-5 * h.inputScale!, `${h.inputScale} vs ${inputScaleFor(direct)}`);
    assert.ok(h.inputScale! * FP8_E4M3_MAX >= direct * (1 - 1e-6));
  } finally {
    ckpt.close();
  }
});

test('demo model: static FP8 scales keep perplexity within 1.5% of dynamic per-token FP8', async () => {
  const { out } = await staticBuild;
  const dynamic = path.join(tmp, 'dynamic');
  await buildQuantizedCheckpoint({ modelDir: DEMO, outDir: dynamic, kind: 'fp8', jobs: 1 });
  const tok = await Tokenizer.load(DEMO);
  const scored = tok.encode(fs.readFileSync(TEXT, 'utf8')).slice(CALIB_WINDOWS * WINDOW); // windows the calibration never saw
  const ppl = async (dir: string) => {
    const backend = new CpuBackend();
    const m = loadModel(dir, backend);
    assert.equal(m.quant?.activation, dir === out ? 'static' : 'dynamic');
    const runner = new ModelRunner(backend, m.spec, m.weights, { numBlocks: WINDOW / 16, blockSize: 16, maxModelLen: WINDOW, maxNumBatchedTokens: WINDOW, maxNumSeqs: 1, maxNumLogits: WINDOW });
    const r = await computePerplexity(runner, scored, WINDOW, SCORE_WINDOWS);
    runner.dispose();
    return r.ppl;
  };
  const dyn = await ppl(dynamic);
  const st = await ppl(out);
  const rel = st / dyn - 1;
  assert.ok(Math.abs(rel) < MAX_REL_PPL_CHANGE, `static ${st.toFixed(3)} vs dynamic ${dyn.toFixed(3)} (${(100 * rel).toFixed(2)}%)`);
});

test('calibration refusals: non-fp8 kinds, a short text, CLI misuse', async () => {
  await assert.rejects(
    buildQuantizedCheckpoint({ modelDir: DEMO, outDir: path.join(tmp, 'int8'), kind: 'int8', calibration: { textFile: TEXT } }),
    (e) => codeOf(e) === 'PGN_ERR_INVALID_ARGUMENT' && /only fp8/.test((e as Error).message),
  );
  const short = path.join(tmp, 'short.txt');
  fs.writeFileSync(short, 'a few words only');
  await assert.rejects(
    buildQuantizedCheckpoint({ modelDir: DEMO, outDir: path.join(tmp, 'short'), kind: 'fp8', jobs: 1, calibration: { textFile: short, numWindows: 2, windowLen: 64 } }),
    (e) => codeOf(e) === 'PGN_ERR_INVALID_ARGUMENT' && (e as Error).message.includes(short) && /need 128/.test((e as Error).message),
  );
  await assert.rejects(
    buildQuantizedCheckpoint({ modelDir: DEMO, outDir: path.join(tmp, 'long'), kind: 'fp8', jobs: 1, calibration: { textFile: TEXT, windowLen: 4096 } }),
    (e) => codeOf(e) === 'PGN_ERR_INVALID_ARGUMENT' && /1024/.test((e as Error).message),
  );
  const o = path.join(tmp, 'cli');
  await assert.rejects(runBuild(['--model', DEMO, '-q', 'int4', '--calibrate', TEXT, '-o', o]), (e) => e instanceof UsageError && /fp8/.test(e.message));
  await assert.rejects(runBuild(['--model', DEMO, '-q', 'fp8', '--calib-windows', '4', '-o', o]), (e) => e instanceof UsageError && /--calibrate/.test(e.message));
  await assert.rejects(runBuild(['--model', DEMO, '-q', 'fp8', '--calibrate', TEXT, '--calib-window-len', '1', '-o', o]), (e) => e instanceof UsageError);
});
