// Pre-quantized FP8 / INT8 / packed INT4 checkpoints (compressed-tensors, ModelOpt, vLLM "fp8",
// fbgemm_fp8) as their tools store them: config detection, per-module loading into the canonical
// layouts, q|k|v concatenation of FP8 scales, and loadLinearWeight on the CPU backend.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CpuBackend, cpuData } from '../src/backends/cpu/cpu-backend.js';
import { isQuantizedWeight } from '../src/backends/backend.js';
import { Checkpoint } from '../src/weights/checkpoint.js';
import { writeSafetensors, type TensorToWrite } from '../src/weights/safetensors-writer.js';
import { f32ToBf16 } from '../src/weights/dtype.js';
import { E4M3_TO_F32, encodeE4M3 } from '../src/weights/quant/fp8.js';
import { detectQuantization, detectQuantizationInDir } from '../src/weights/quant/index.js';
import { linearWeightExists, loadLinearWeight, readQuantizedLinear } from '../src/weights/quant/load.js';
import { dequantize } from '../src/weights/quant/dequantize.js';
import { isPeregrineError, type ErrorCode } from '../src/errors.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pgn-quant-ckpt-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));
let dirCount = 0;

const L = 'model.layers.0';
const f32 = (shape: number[], values: number[]): TensorToWrite => ({ dtype: 'F32', shape, data: new Uint8Array(Float32Array.from(values).buffer) });
const bf16 = (shape: number[], values: number[]): TensorToWrite => ({ dtype: 'BF16', shape, data: new Uint8Array(Uint16Array.from(values, f32ToBf16).buffer) });
const fp8 = (shape: number[], values: number[]): TensorToWrite => ({ dtype: 'F8_E4M3', shape, data: Uint8Array.from(values, encodeE4M3) });
const i8 = (shape: number[], values: number[]): TensorToWrite => ({ dtype: 'I8', shape, data: new Uint8Array(Int8Array.from(values).buffer) });

function writeDir(tensors: Record<string, TensorToWrite>, files: Record<string, unknown> = {}): string {
  const dir = fs.mkdtempSync(path.join(tmp, `ckpt-${dirCount++}-`));
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  for (const [name, json] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), JSON.stringify(json));
  return dir;
}

function expectCode(fn: () => unknown, code: ErrorCode, parts: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isPeregrineError(e), String(e));
    assert.equal(e.code, code, e.message);
    for (const p of parts) assert.ok(e.message.includes(p), `message lacks '${p}': ${e.message}`);
    return true;
  });
}

const CT_FP8 = (strategy: 'tensor' | 'channel', dynamic: boolean) => ({
  quant_method: 'compressed-tensors',
  format: 'float-quantized',
  config_groups: {
    group_0: {
      targets: ['Linear'],
      weights: { num_bits: 8, type: 'float', strategy, symmetric: true, dynamic: false },
      input_activations: { num_bits: 8, type: 'float', strategy: dynamic ? 'token' : 'tensor', symmetric: true, dynamic },
    },
  },
  ignore: ['lm_head'],
});

// E4M3-exact values (so the expected weights are products of exact numbers)
const Q = [1, -2, 0.5, 448, -0.015625, 3.5, 0, 0.25];

test('compressed-tensors FP8 per tensor + static input_scale: weight * weight_scale, input scale kept', () => {
  const cfg = detectQuantization({ quantization_config: CT_FP8('tensor', false) })!;
  assert.deepEqual([cfg.method, cfg.kind, cfg.activation], ['compressed-tensors', 'fp8', 'static']);
  assert.deepEqual(cfg.ignore, ['lm_head']);
  const dir = writeDir({
    [`${L}.self_attn.o_proj.weight`]: fp8([2, 4], Q),
    [`${L}.self_attn.o_proj.weight_scale`]: f32([1], [0.125]),
    [`${L}.self_attn.o_proj.input_scale`]: f32([1], [0.0625]),
    'lm_head.weight': bf16([2, 4], [1, 2, 3, 4, 5, 6, 7, 8]),
  });
  const ckpt = Checkpoint.open(dir);
  const h = readQuantizedLinear(ckpt, `${L}.self_attn.o_proj.weight`, cfg)!;
  assert.equal(h.kind, 'fp8');
  assert.deepEqual([...h.scales], [0.125]);
  assert.equal(h.inputScale, 0.0625);
  assert.deepEqual([...dequantize(h)], Q.map((q) => q * 0.125));
  assert.equal(readQuantizedLinear(ckpt, 'lm_head.weight', cfg), null, 'the ignored lm_head stays a plain tensor');
  ckpt.close();
});

test('compressed-tensors FP8 per channel ([N, 1] bf16 scales), dynamic activations', () => {
  const cfg = detectQuantization({ quantization_config: CT_FP8('channel', true) })!;
  assert.equal(cfg.activation, 'dynamic');
  const ckpt = Checkpoint.open(writeDir({ [`${L}.mlp.down_proj.weight`]: fp8([2, 4], Q), [`${L}.mlp.down_proj.weight_scale`]: bf16([2, 1], [0.5, 0.25]) }));
  const h = readQuantizedLinear(ckpt, `${L}.mlp.down_proj.weight`, cfg)!;
  assert.deepEqual([...h.scales], [0.5, 0.25]);
  assert.equal(h.inputScale, null);
  assert.deepEqual([...dequantize(h)], Q.map((q, i) => q * (i < 4 ? 0.5 : 0.25)));
  ckpt.close();
});

test('FP8 q|k|v with different per-tensor scales: per-row scale vector (exact), input scale = max', () => {
  const cfg = detectQuantization({ quantization_config: CT_FP8('tensor', false) })!;
  const tensors: Record<string, TensorToWrite> = {};
  const scales = { q_proj: 0.5, k_proj: 0.25, v_proj: 0.5 };
  const inputs = { q_proj: 0.1, k_proj: 0.2, v_proj: 0.15 };
  for (const [p, s] of Object.entries(scales)) {
    tensors[`${L}.self_attn.${p}.weight`] = fp8([2, 4], Q);
    tensors[`${L}.self_attn.${p}.weight_scale`] = f32([1], [s]);
    tensors[`${L}.self_attn.${p}.input_scale`] = f32([1], [inputs[p as keyof typeof inputs]]);
  }
  const ckpt = Checkpoint.open(writeDir(tensors));
  const names = Object.keys(scales).map((p) => `${L}.self_attn.${p}.weight`);
  const h = readQuantizedLinear(ckpt, names, cfg)!;
  assert.deepEqual(h.shape, [6, 4]);
  assert.deepEqual([...h.scales], [0.5, 0.5, 0.25, 0.25, 0.5, 0.5]);
  assert.equal(h.inputScale, Math.fround(0.2));
  const deq = dequantize(h);
  for (let r = 0; r < 6; r++) for (let k = 0; k < 4; k++) assert.equal(deq[r * 4 + k], Q[(r % 2) * 4 + k]! * h.scales[r]!);
  // equal scales stay one per-tensor scale
  const same = { ...tensors, [`${L}.self_attn.k_proj.weight_scale`]: f32([1], [0.5]) };
  const ckpt2 = Checkpoint.open(writeDir(same));
  assert.deepEqual([...readQuantizedLinear(ckpt2, names, cfg)!.scales], [0.5]);
  ckpt.close();
  ckpt2.close();
});

test('ModelOpt FP8 from hf_quant_config.json: scalar [] weight_scale and input_scale', () => {
  const hfQuant = { producer: { name: 'modelopt', version: '0.19.0' }, quantization: { quant_algo: 'FP8', kv_cache_quant_algo: 'FP8', exclude_modules: ['lm_head'] } };
  const dir = writeDir(
    { [`${L}.mlp.up_proj.weight`]: fp8([2, 4], Q), [`${L}.mlp.up_proj.weight_scale`]: f32([], [2]), [`${L}.mlp.up_proj.input_scale`]: f32([], [0.03125]) },
    { 'hf_quant_config.json': hfQuant },
  );
  assert.equal(detectQuantization({}), null);
  const cfg = detectQuantizationInDir(dir, {})!;
  assert.deepEqual([cfg.method, cfg.kind, cfg.activation], ['modelopt', 'fp8', 'static']);
  assert.deepEqual(cfg.ignore, ['lm_head']);
  const ckpt = Checkpoint.open(dir);
  const h = readQuantizedLinear(ckpt, `${L}.mlp.up_proj.weight`, cfg)!;
  assert.deepEqual([...h.scales], [2]);
  assert.equal(h.inputScale, 0.03125);
  assert.deepEqual([...dequantize(h)], Q.map((q) => q * 2));
  ckpt.close();
  // config.json form, per channel
  const pc = detectQuantization({ quantization_config: { quant_method: 'modelopt', quant_algo: 'FP8_PER_CHANNEL_PER_TOKEN', ignore: ['lm_head'] } })!;
  assert.equal(pc.activation, 'dynamic');
  expectCode(() => detectQuantization({ quantization_config: { quant_method: 'modelopt', quant_algo: 'NVFP4' } }), 'PGN_ERR_UNSUPPORTED_FEATURE', ['NVFP4']);
});

test('vLLM / AutoFP8 "fp8" and fbgemm_fp8 configs; block-wise FP8 and unknown methods refused', () => {
  const st = detectQuantization({ quantization_config: { quant_method: 'fp8', activation_scheme: 'static' } })!;
  assert.deepEqual([st.method, st.kind, st.activation], ['fp8', 'fp8', 'static']);
  const fb = detectQuantization({ quantization_config: { quant_method: 'fbgemm_fp8', activation_scale_ub: 1200, modules_to_not_convert: ['lm_head'] } })!;
  assert.deepEqual([fb.method, fb.activation, fb.ignore], ['fbgemm_fp8', 'dynamic', ['lm_head']]);
  expectCode(() => detectQuantization({ quantization_config: { quant_method: 'fp8', weight_block_size: [128, 128] } }), 'PGN_ERR_UNSUPPORTED_FEATURE', ['block-wise']);
  expectCode(() => detectQuantization({ quantization_config: { quant_method: 'bitsandbytes', load_in_4bit: true } }), 'PGN_ERR_UNSUPPORTED_FEATURE', ['bitsandbytes', 'gptq']);
  expectCode(() => detectQuantization({ quantization_config: 'fp8' }), 'PGN_ERR_CONFIG_INVALID', ['quantization_config']);
  const blockCt = { ...CT_FP8('tensor', true), config_groups: { g: { targets: ['Linear'], weights: { num_bits: 8, type: 'float', strategy: 'block', block_structure: [128, 128] } } } };
  expectCode(() => detectQuantization({ quantization_config: blockCt }), 'PGN_ERR_UNSUPPORTED_FEATURE', ['group "g"', 'strategy block']);
});

test('FP8 block-wise weight_scale tensors are refused by name', () => {
  const cfg = detectQuantization({ quantization_config: CT_FP8('channel', true) })!;
  const ckpt = Checkpoint.open(writeDir({ [`${L}.mlp.up_proj.weight`]: fp8([2, 4], Q), [`${L}.mlp.up_proj.weight_scale`]: f32([2, 2], [1, 1, 1, 1]) }));
  expectCode(() => readQuantizedLinear(ckpt, `${L}.mlp.up_proj.weight`, cfg), 'PGN_ERR_UNSUPPORTED_FEATURE', [`${L}.mlp.up_proj.weight_scale`, 'block']);
  ckpt.close();
});

const CT_INT = (bits: 4 | 8, strategy: 'channel' | 'group', format: string, groupSize?: number) => ({
  quant_method: 'compressed-tensors',
  format,
  config_groups: { group_0: { targets: ['Linear'], weights: { num_bits: bits, type: 'int', strategy, symmetric: true, dynamic: false, group_size: groupSize ?? null } } },
  ignore: ['lm_head'],
});

test('compressed-tensors int-quantized INT8: I8 weight, [N, 1] scales', () => {
  const cfg = detectQuantization({ quantization_config: CT_INT(8, 'channel', 'int-quantized') })!;
  assert.deepEqual([cfg.kind, cfg.activation], ['int8', 'none']);
  const codes = [127, -128, 3, 0, -1, 2, 64, -64];
  const ckpt = Checkpoint.open(writeDir({ [`${L}.mlp.down_proj.weight`]: i8([2, 4], codes), [`${L}.mlp.down_proj.weight_scale`]: f32([2, 1], [0.5, 0.25]) }));
  const h = readQuantizedLinear(ckpt, `${L}.mlp.down_proj.weight`, cfg)!;
  assert.equal(h.kind, 'int8');
  assert.deepEqual([...dequantize(h)], codes.map((c, i) => c * (i < 4 ? 0.5 : 0.25)));
  ckpt.close();
});

test('compressed-tensors pack-quantized: 4-bit (values + 8, along K) and 8-bit (values + 128)', () => {
  // one row, K = 8, values -8..7 -> stored 0..15 in nibble order
  const values = [-8, -1, 0, 1, 7, 3, -4, 2];
  const word4 = values.reduce((w, v, i) => w | ((v + 8) << (4 * i)), 0);
  const cfg4 = detectQuantization({ quantization_config: CT_INT(4, 'group', 'pack-quantized', 8) })!;
  assert.deepEqual([cfg4.kind, cfg4.groupSize], ['int4', 8]);
  const shape = { dtype: 'I64' as const, shape: [2], data: new Uint8Array(BigInt64Array.of(1n, 8n).buffer) };
  const ckpt4 = Checkpoint.open(writeDir({
    [`${L}.mlp.up_proj.weight_packed`]: { dtype: 'I32', shape: [1, 1], data: new Uint8Array(Int32Array.of(word4).buffer) },
    [`${L}.mlp.up_proj.weight_scale`]: bf16([1, 1], [0.5]),
    [`${L}.mlp.up_proj.weight_shape`]: shape,
  }));
  const h4 = readQuantizedLinear(ckpt4, `${L}.mlp.up_proj.weight`, cfg4)!;
  assert.deepEqual([h4.kind, h4.zeros], ['int4', null]);
  assert.deepEqual([...dequantize(h4)], values.map((v) => v * 0.5));
  ckpt4.close();

  const cfg8 = detectQuantization({ quantization_config: CT_INT(8, 'channel', 'pack-quantized') })!;
  const bytes = Uint8Array.from(values, (v) => (v * 16 + 128) & 0xff);
  const ckpt8 = Checkpoint.open(writeDir({
    [`${L}.mlp.up_proj.weight_packed`]: { dtype: 'I32', shape: [1, 2], data: bytes },
    [`${L}.mlp.up_proj.weight_scale`]: f32([1, 1], [0.25]),
    [`${L}.mlp.up_proj.weight_shape`]: shape,
  }));
  const h8 = readQuantizedLinear(ckpt8, `${L}.mlp.up_proj.weight`, cfg8)!;
  assert.equal(h8.kind, 'int8');
  assert.deepEqual([...dequantize(h8)], values.map((v) => v * 16 * 0.25));
  ckpt8.close();
  expectCode(() => detectQuantization({ quantization_config: { ...CT_INT(4, 'group', 'pack-quantized', 8), config_groups: { g: { weights: { num_bits: 4, type: 'int', strategy: 'group', group_size: 8, symmetric: false } } } } }),
    'PGN_ERR_UNSUPPORTED_FEATURE', ['asymmetric']);
});

test('loadLinearWeight on the CPU: QuantizedWeight for quantized modules, Tensor for plain ones; linearWeightExists', () => {
  const cfg = detectQuantization({ quantization_config: CT_FP8('tensor', false) })!;
  const dir = writeDir({
    [`${L}.self_attn.o_proj.weight`]: fp8([2, 4], Q),
    [`${L}.self_attn.o_proj.weight_scale`]: f32([1], [0.125]),
    [`${L}.self_attn.o_proj.input_scale`]: f32([1], [0.0625]),
    'lm_head.weight': bf16([2, 4], [1, 2, 3, 4, 5, 6, 7, 8]),
  });
  const ckpt = Checkpoint.open(dir);
  const backend = new CpuBackend();
  const w = loadLinearWeight(ckpt, `${L}.self_attn.o_proj.weight`, backend, cfg);
  assert.ok(isQuantizedWeight(w));
  assert.deepEqual([w.kind, w.shape, w.groupSize, w.qweight.shape, w.qweight.dtype, w.scales.shape], ['fp8', [2, 4], 4, [2, 1], 'i32', [1]]);
  assert.deepEqual([...cpuData(w.inputScale!)], [0.0625]);
  const bytes = new Uint8Array((cpuData(w.qweight) as Int32Array).buffer);
  assert.deepEqual([...bytes].map((b) => E4M3_TO_F32[b]), Q);
  const head = loadLinearWeight(ckpt, 'lm_head.weight', backend, cfg);
  assert.ok(!isQuantizedWeight(head));
  assert.deepEqual([...cpuData(head)], [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.ok(linearWeightExists(ckpt, `${L}.self_attn.o_proj.weight`, cfg));
  assert.ok(!linearWeightExists(ckpt, `${L}.self_attn.q_proj.weight`, cfg));
  // permuteBlocks moves whole quantized rows
  const permuted = readQuantizedLinear(ckpt, `${L}.self_attn.o_proj.weight`, cfg, [{ kind: 'permuteBlocks', blockRows: 1, order: [1, 0] }])!;
  assert.deepEqual([...dequantize(permuted)], [...Q.slice(4), ...Q.slice(0, 4)].map((q) => q * 0.125));
  expectCode(() => readQuantizedLinear(ckpt, `${L}.self_attn.o_proj.weight`, cfg, [{ kind: 'transpose' }]), 'PGN_ERR_UNSUPPORTED_FEATURE', ['transpose']);
  ckpt.close();
});

test('concatenating a quantized with an unquantized shard is refused, naming the plain one', () => {
  const cfg = detectQuantization({ quantization_config: CT_FP8('tensor', true) })!;
  const ckpt = Checkpoint.open(writeDir({
    [`${L}.mlp.gate_proj.weight`]: fp8([2, 4], Q),
    [`${L}.mlp.gate_proj.weight_scale`]: f32([1], [1]),
    [`${L}.mlp.up_proj.weight`]: bf16([2, 4], [1, 2, 3, 4, 5, 6, 7, 8]),
  }));
  expectCode(() => readQuantizedLinear(ckpt, [`${L}.mlp.gate_proj.weight`, `${L}.mlp.up_proj.weight`], cfg), 'PGN_ERR_UNSUPPORTED_FEATURE', [`'${L}.mlp.up_proj.weight'`]);
  ckpt.close();
});
