// AWQ and GPTQ checkpoints on small hand-built tensors, packed here the way AutoAWQ
// (WQLinear_GEMM.from_linear: qweight [K, N/8] along N in order [0, 2, 4, 6, 1, 3, 5, 7]) and
// AutoGPTQ (QuantLinear.pack: qweight [K/8, N] along K, qzeros stored minus one) lay them out,
// read back through the loader into the canonical int4 layout.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Checkpoint } from '../src/weights/checkpoint.js';
import { writeSafetensors, type TensorToWrite } from '../src/weights/safetensors-writer.js';
import { f32ToF16, f16ToF32 } from '../src/weights/dtype.js';
import { detectQuantization } from '../src/weights/quant/index.js';
import { linearWeightExists, readQuantizedLinear } from '../src/weights/quant/load.js';
import { dequantize } from '../src/weights/quant/dequantize.js';
import { int4ToGptq } from '../src/weights/quant/gptq.js';
import { quantizeInt4, unpackInt4 } from '../src/weights/quant/int4.js';
import { isPeregrineError, type ErrorCode } from '../src/errors.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pgn-quant-awq-gptq-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));
let dirCount = 0;

const N = 16, K = 32, G = 16, numG = K / G;
const MODULE = 'model.layers.0.self_attn.q_proj';
/** codes[k][n], zeros[g][n], scales[g][n] of a [N, K] weight in the tools' [K, N] orientation */
const code = (k: number, n: number) => (k * 7 + n * 3) % 16;
const zero = (g: number, n: number) => 1 + ((g * 5 + n) % 15); // 1..15 (GPTQ v1 cannot store 0)
const scale = (g: number, n: number) => f16ToF32(f32ToF16(0.01 * (1 + n) + 0.5 * g));
const expected = (n: number, k: number) => (code(k, n) - zero(Math.floor(k / G), n)) * scale(Math.floor(k / G), n);

const i32 = (shape: number[], a: Int32Array): TensorToWrite => ({ dtype: 'I32', shape, data: new Uint8Array(a.buffer) });
const f16 = (shape: number[], f: (i: number) => number): TensorToWrite => {
  const n = shape.reduce((a, b) => a * b, 1);
  return { dtype: 'F16', shape, data: new Uint8Array(Uint16Array.from({ length: n }, (_, i) => f32ToF16(f(i))).buffer) };
};

function gptqTensors(zeroOf: (g: number, n: number) => number, storedOffset: number, gIdx = (k: number) => Math.floor(k / G)): Record<string, TensorToWrite> {
  const qweight = new Int32Array((K / 8) * N);
  for (let row = 0; row < K / 8; row++) for (let n = 0; n < N; n++) for (let j = 0; j < 8; j++) qweight[row * N + n]! |= code(row * 8 + j, n) << (4 * j);
  const qzeros = new Int32Array(numG * (N / 8));
  for (let g = 0; g < numG; g++) for (let c = 0; c < N / 8; c++) for (let j = 0; j < 8; j++) qzeros[g * (N / 8) + c]! |= ((zeroOf(g, c * 8 + j) - storedOffset) & 0xf) << (4 * j);
  return {
    [`${MODULE}.qweight`]: i32([K / 8, N], qweight),
    [`${MODULE}.qzeros`]: i32([numG, N / 8], qzeros),
    [`${MODULE}.scales`]: f16([numG, N], (i) => scale(Math.floor(i / N), i % N)),
    [`${MODULE}.g_idx`]: i32([K], Int32Array.from({ length: K }, (_, k) => gIdx(k))),
  };
}

const AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7];
function awqTensors(): Record<string, TensorToWrite> {
  const qweight = new Int32Array(K * (N / 8));
  for (let k = 0; k < K; k++) for (let c = 0; c < N / 8; c++) for (let i = 0; i < 8; i++) qweight[k * (N / 8) + c]! |= code(k, c * 8 + AWQ_ORDER[i]!) << (4 * i);
  const qzeros = new Int32Array(numG * (N / 8));
  for (let g = 0; g < numG; g++) for (let c = 0; c < N / 8; c++) for (let i = 0; i < 8; i++) qzeros[g * (N / 8) + c]! |= zero(g, c * 8 + AWQ_ORDER[i]!) << (4 * i);
  return {
    [`${MODULE}.qweight`]: i32([K, N / 8], qweight),
    [`${MODULE}.qzeros`]: i32([numG, N / 8], qzeros),
    [`${MODULE}.scales`]: f16([numG, N], (i) => scale(Math.floor(i / N), i % N)),
  };
}

function openWith(tensors: Record<string, TensorToWrite>): Checkpoint {
  const dir = fs.mkdtempSync(path.join(tmp, `ckpt-${dirCount++}-`));
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  return Checkpoint.open(dir);
}

function assertWeight(got: Float32Array, want: (n: number, k: number) => number): void {
  for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) assert.equal(got[n * K + k], Math.fround(want(n, k)), `w[${n}, ${k}]`);
}

function expectCode(fn: () => unknown, code: ErrorCode, parts: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isPeregrineError(e), String(e));
    assert.equal(e.code, code, e.message);
    for (const p of parts) assert.ok(e.message.includes(p), `message lacks '${p}': ${e.message}`);
    return true;
  });
}

const GPTQ_CONFIG = { quant_method: 'gptq', bits: 4, group_size: G, desc_act: false, sym: false, checkpoint_format: 'gptq' };
const AWQ_CONFIG = { quant_method: 'awq', bits: 4, group_size: G, zero_point: true, version: 'gemm' };

test('GPTQ v1 (zeros stored minus one): dequantizes to (q - zero) * scale', () => {
  const cfg = detectQuantization({ quantization_config: GPTQ_CONFIG })!;
  assert.equal(cfg.method, 'gptq');
  assert.equal(cfg.zeroOffset, 1);
  const ckpt = openWith(gptqTensors(zero, 1));
  const h = readQuantizedLinear(ckpt, `${MODULE}.weight`, cfg)!;
  assert.equal(h.kind, 'int4');
  assert.deepEqual(h.shape, [N, K]);
  assert.equal(h.groupSize, G);
  // canonical codes: row n, along K
  const codes = unpackInt4(h.qweight, N, K);
  for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) assert.equal(codes[n * K + k], code(k, n));
  assertWeight(dequantize(h), expected);
  assert.ok(linearWeightExists(ckpt, `${MODULE}.weight`, cfg), 'a GPTQ module has no .weight tensor, yet exists');
  assert.ok(!linearWeightExists(ckpt, `${MODULE}.weight`, null));
  ckpt.close();
});

test('GPTQ v2 stores zeros as they are; symmetric v1 (0x77777777) loads with zeros null', () => {
  const v2 = detectQuantization({ quantization_config: { ...GPTQ_CONFIG, checkpoint_format: 'gptq_v2' } })!;
  assert.equal(v2.zeroOffset, 0);
  const ckpt2 = openWith(gptqTensors(zero, 0));
  assertWeight(dequantize(readQuantizedLinear(ckpt2, `${MODULE}.weight`, v2)!), expected);
  ckpt2.close();

  const sym = detectQuantization({ quantization_config: { ...GPTQ_CONFIG, sym: true } })!;
  const tensors = gptqTensors(() => 8, 1);
  assert.equal(new Int32Array(tensors[`${MODULE}.qzeros`]!.data.buffer)[0], 0x77777777);
  const ckpt = openWith(tensors);
  const h = readQuantizedLinear(ckpt, `${MODULE}.weight`, sym)!;
  assert.equal(h.zeros, null);
  assertWeight(dequantize(h), (n, k) => (code(k, n) - 8) * scale(Math.floor(k / G), n));
  ckpt.close();
});

test('GPTQ: desc_act true and a permuted g_idx are PGN_ERR_UNSUPPORTED_FEATURE', () => {
  expectCode(() => detectQuantization({ quantization_config: { ...GPTQ_CONFIG, desc_act: true } }), 'PGN_ERR_UNSUPPORTED_FEATURE', ['desc_act']);
  expectCode(() => detectQuantization({ quantization_config: { ...GPTQ_CONFIG, bits: 3 } }), 'PGN_ERR_UNSUPPORTED_FEATURE', ['3 bits']);
  expectCode(() => detectQuantization({ quantization_config: { ...GPTQ_CONFIG, checkpoint_format: 'marlin' } }), 'PGN_ERR_UNSUPPORTED_FEATURE', ['marlin']);
  const cfg = detectQuantization({ quantization_config: GPTQ_CONFIG })!;
  const ckpt = openWith(gptqTensors(zero, 1, (k) => (k * 3) % numG)); // act-order style g_idx
  expectCode(() => readQuantizedLinear(ckpt, `${MODULE}.weight`, cfg), 'PGN_ERR_UNSUPPORTED_FEATURE', [`${MODULE}.g_idx`, 'act-order']);
  ckpt.close();
});

test('GPTQ: a scales tensor of the wrong shape is PGN_ERR_WEIGHTS_SHAPE naming tensor and file', () => {
  const cfg = detectQuantization({ quantization_config: GPTQ_CONFIG })!;
  const tensors = gptqTensors(zero, 1);
  tensors[`${MODULE}.scales`] = f16([numG + 1, N], () => 1);
  const ckpt = openWith(tensors);
  expectCode(() => readQuantizedLinear(ckpt, `${MODULE}.weight`, cfg), 'PGN_ERR_WEIGHTS_SHAPE', [`${MODULE}.scales`, 'model.safetensors', `[${numG}, ${N}]`]);
  ckpt.close();
});

test('AWQ (gemm): interleaved nibble order [0, 2, 4, 6, 1, 3, 5, 7] along N, zeros stored as they are', () => {
  const cfg = detectQuantization({ quantization_config: AWQ_CONFIG })!;
  assert.equal(cfg.method, 'awq');
  const tensors = awqTensors();
  // word 0 of input row 0 holds columns 0, 2, 4, 6, 1, 3, 5, 7 in nibbles 0..7
  const w0 = new Int32Array(tensors[`${MODULE}.qweight`]!.data.buffer)[0]!;
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7].map((i) => (w0 >>> (4 * i)) & 0xf), AWQ_ORDER.map((n) => code(0, n)));
  const ckpt = openWith(tensors);
  const h = readQuantizedLinear(ckpt, `${MODULE}.weight`, cfg)!;
  assertWeight(dequantize(h), expected);
  // the same bytes read as GPTQ-ordered would not match: the order matters
  assert.notDeepEqual([...unpackInt4(h.qweight, N, K).subarray(0, 8)], [0, 1, 2, 3, 4, 5, 6, 7].map((i) => (w0 >>> (4 * i)) & 0xf));
  ckpt.close();
});

test('AWQ: versions other than gemm and bits other than 4 are refused', () => {
  expectCode(() => detectQuantization({ quantization_config: { ...AWQ_CONFIG, version: 'gemv' } }), 'PGN_ERR_UNSUPPORTED_FEATURE', ['gemv']);
  expectCode(() => detectQuantization({ quantization_config: { ...AWQ_CONFIG, bits: 8 } }), 'PGN_ERR_UNSUPPORTED_FEATURE', ['8 bits']);
});

test('q|k|v concatenation of GPTQ modules appends rows (codes, scales, zeros)', () => {
  const cfg = detectQuantization({ quantization_config: GPTQ_CONFIG })!;
  const t = gptqTensors(zero, 1);
  const renamed: Record<string, TensorToWrite> = {};
  for (const p of ['q_proj', 'k_proj']) for (const [k, v] of Object.entries(t)) renamed[k.replace('q_proj', p)] = v;
  const ckpt = openWith(renamed);
  const names = ['q_proj', 'k_proj'].map((p) => `model.layers.0.self_attn.${p}.weight`);
  const h = readQuantizedLinear(ckpt, names, cfg)!;
  assert.deepEqual(h.shape, [2 * N, K]);
  const deq = dequantize(h);
  for (let n = 0; n < 2 * N; n++) for (let k = 0; k < K; k++) assert.equal(deq[n * K + k], Math.fround(expected(n % N, k)));
  ckpt.close();
});

test('int4ToGptq (what peregrine build writes) reads back through the GPTQ loader unchanged', () => {
  const w = Float32Array.from({ length: N * K }, (_, i) => Math.sin(i * 0.37) * 0.05 + (i % 5) * 0.01);
  for (const symmetric of [true, false]) {
    const h = quantizeInt4(w, N, K, { groupSize: G, symmetric, f16Scales: true, minZero: 1 });
    const ckpt = openWith(int4ToGptq(MODULE, h));
    const cfg = detectQuantization({ quantization_config: { ...GPTQ_CONFIG, sym: symmetric } })!;
    const back = readQuantizedLinear(ckpt, `${MODULE}.weight`, cfg)!;
    assert.deepEqual([...back.qweight], [...h.qweight]);
    assert.deepEqual([...back.scales], [...h.scales]);
    assert.deepEqual(back.zeros && [...back.zeros], h.zeros && [...h.zeros]);
    ckpt.close();
  }
});
