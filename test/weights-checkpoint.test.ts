import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Checkpoint, INDEX_FILE, writeSafetensors, type TensorToWrite } from '../src/weights/index.js';
import { isPeregrineError, type ErrorCode } from '../src/errors.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pgn-checkpoint-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));
let dirCount = 0;
const freshDir = (stem: string) => fs.mkdtempSync(path.join(tmp, `${stem}-${dirCount++}-`));

const u8 = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
const f32 = (shape: number[], ...values: number[]): TensorToWrite => ({ dtype: 'F32', shape, data: u8(new Float32Array(values)) });
const bf16 = (shape: number[], ...bits: number[]): TensorToWrite => ({ dtype: 'BF16', shape, data: u8(new Uint16Array(bits)) });

function expectError(fn: () => unknown, code: ErrorCode, parts: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isPeregrineError(e), `not a PeregrineError: ${String(e)}`);
    assert.equal(e.code, code, e.message);
    for (const p of parts) assert.ok(e.message.includes(p), `message lacks '${p}': ${e.message}`);
    return true;
  });
}

/** A two-shard checkpoint: q/k in shard 1, v/o in shard 2, with its index. */
function writeSharded(dir: string, weightMapOverride?: Record<string, string>): void {
  const shard1 = 'model-00001-of-00002.safetensors';
  const shard2 = 'model-00002-of-00002.safetensors';
  writeSafetensors(path.join(dir, shard1), {
    'layers.0.q_proj.weight': f32([2, 3], 1, 2, 3, 4, 5, 6),
    'layers.0.k_proj.weight': f32([1, 3], 7, 8, 9),
  });
  writeSafetensors(path.join(dir, shard2), {
    'layers.0.v_proj.weight': f32([1, 3], 10, 11, 12),
    'layers.0.o_proj.weight': bf16([1, 3], 0x3f80, 0xc020, 0x4049),
  });
  const weightMap = weightMapOverride ?? {
    'layers.0.q_proj.weight': shard1,
    'layers.0.k_proj.weight': shard1,
    'layers.0.v_proj.weight': shard2,
    'layers.0.o_proj.weight': shard2,
  };
  fs.writeFileSync(path.join(dir, INDEX_FILE), JSON.stringify({ metadata: { total_size: 54 }, weight_map: weightMap }));
}

test('single model.safetensors: names, has, info, read, readF32 (bf16 converted)', () => {
  const dir = freshDir('single');
  writeSafetensors(path.join(dir, 'model.safetensors'), { 'norm.weight': bf16([3], 0x3f80, 0xc020, 0x4049), 'embed.weight': f32([2, 2], 1, 2, 3, 4) });
  fs.writeFileSync(path.join(dir, 'other.safetensors'), 'ignored: model.safetensors wins');
  const ckpt = Checkpoint.open(dir);
  try {
    assert.deepEqual(ckpt.names().sort(), ['embed.weight', 'norm.weight']);
    assert.ok(ckpt.has('norm.weight') && !ckpt.has('lm_head.weight'));
    assert.deepEqual(ckpt.info('norm.weight').shape, [3]);
    assert.equal(ckpt.info('norm.weight').file, path.join(dir, 'model.safetensors'));
    assert.deepEqual([...ckpt.readF32('norm.weight')], [1, -2.5, 3.140625]);
    assert.deepEqual([...ckpt.readF32('embed.weight')], [1, 2, 3, 4]);
    assert.equal(ckpt.read('embed.weight').bytes.byteLength, 16);
  } finally {
    ckpt.close();
  }
});

test('sharded checkpoint via model.safetensors.index.json: each tensor read from its shard', () => {
  const dir = freshDir('sharded');
  writeSharded(dir);
  const ckpt = Checkpoint.open(dir);
  try {
    assert.equal(ckpt.names().length, 4);
    assert.equal(path.basename(ckpt.info('layers.0.q_proj.weight').file), 'model-00001-of-00002.safetensors');
    assert.equal(path.basename(ckpt.info('layers.0.v_proj.weight').file), 'model-00002-of-00002.safetensors');
    assert.deepEqual([...ckpt.readF32('layers.0.k_proj.weight')], [7, 8, 9]);
    assert.deepEqual([...ckpt.readF32('layers.0.v_proj.weight')], [10, 11, 12]);
    assert.deepEqual([...ckpt.readF32('layers.0.o_proj.weight')], [1, -2.5, 3.140625]);
  } finally {
    ckpt.close();
  }
});

test('readConcat packs q|k|v along dim 0 across shards; mismatches are PGN_ERR_WEIGHTS_SHAPE', () => {
  const dir = freshDir('concat');
  writeSharded(dir);
  const ckpt = Checkpoint.open(dir);
  try {
    const qkv = ckpt.readConcat(['layers.0.q_proj.weight', 'layers.0.k_proj.weight', 'layers.0.v_proj.weight']);
    assert.equal(qkv.dtype, 'F32');
    assert.deepEqual(qkv.shape, [4, 3]);
    assert.deepEqual([...new Float32Array(qkv.bytes.buffer)], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    expectError(() => ckpt.readConcat(['layers.0.v_proj.weight', 'layers.0.o_proj.weight']), 'PGN_ERR_WEIGHTS_SHAPE', ["'layers.0.o_proj.weight'", 'BF16', 'F32']);
    expectError(() => ckpt.readConcat(['layers.0.q_proj.weight', 'layers.0.nope']), 'PGN_ERR_WEIGHTS_MISSING_TENSOR', ["'layers.0.nope'", dir]);
    expectError(() => ckpt.readConcat([]), 'PGN_ERR_INVALID_ARGUMENT', []);
  } finally {
    ckpt.close();
  }
  const dir2 = freshDir('concat-dims');
  writeSafetensors(path.join(dir2, 'model.safetensors'), { gate: f32([1, 2], 1, 2), up: f32([1, 3], 1, 2, 3), b: f32([2], 5, 6), c: f32([1], 7) });
  const c2 = Checkpoint.open(dir2);
  expectError(() => c2.readConcat(['gate', 'up']), 'PGN_ERR_WEIGHTS_SHAPE', ["'up'", 'shape [1, 3]', '[1, 2]']);
  assert.deepEqual([...new Float32Array(c2.readConcat(['b', 'c']).bytes.buffer)], [5, 6, 7], '1-D biases concatenate too');
  c2.close();
});

test('no index and no model.safetensors: every *.safetensors in the folder; a duplicated name is an error', () => {
  const dir = freshDir('glob');
  writeSafetensors(path.join(dir, 'a.safetensors'), { x: f32([1], 1) });
  writeSafetensors(path.join(dir, 'b.safetensors'), { y: f32([1], 2) });
  const ckpt = Checkpoint.open(dir);
  assert.deepEqual(ckpt.names(), ['x', 'y']);
  assert.deepEqual([...ckpt.readF32('y')], [2]);
  ckpt.close();
  writeSafetensors(path.join(dir, 'c.safetensors'), { x: f32([1], 3) });
  expectError(() => Checkpoint.open(dir), 'PGN_ERR_WEIGHTS_INDEX_INVALID', ["'x'", 'a.safetensors', 'c.safetensors']);
});

test('a single .safetensors path opens as a checkpoint too', () => {
  const dir = freshDir('file');
  const file = path.join(dir, 'weights.safetensors');
  writeSafetensors(file, { x: f32([2], 1, 2) });
  const ckpt = Checkpoint.open(file);
  assert.deepEqual([...ckpt.readF32('x')], [1, 2]);
  ckpt.close();
});

test('folder without weights or that does not exist -> PGN_ERR_WEIGHTS_NOT_FOUND naming the folder', () => {
  const empty = freshDir('empty');
  fs.writeFileSync(path.join(empty, 'config.json'), '{}');
  expectError(() => Checkpoint.open(empty), 'PGN_ERR_WEIGHTS_NOT_FOUND', [empty, 'model.safetensors']);
  const absent = path.join(tmp, 'no-such-model');
  expectError(() => Checkpoint.open(absent), 'PGN_ERR_WEIGHTS_NOT_FOUND', [absent]);
});

test('missing tensor names the folder and suggests close names', () => {
  const dir = freshDir('missing');
  writeSharded(dir);
  const ckpt = Checkpoint.open(dir);
  expectError(() => ckpt.info('model.layers.0.q_proj.weight'), 'PGN_ERR_WEIGHTS_MISSING_TENSOR', [
    "'model.layers.0.q_proj.weight'",
    dir,
    "'layers.0.q_proj.weight'",
  ]);
  expectError(() => ckpt.read('lm_head.weight'), 'PGN_ERR_WEIGHTS_MISSING_TENSOR', ["'lm_head.weight'", dir]);
  ckpt.close();
});

test('broken index: bad JSON, no weight_map, shard that does not exist, tensor not in its shard -> INDEX_INVALID', () => {
  const badJson = freshDir('idx-json');
  writeSharded(badJson);
  fs.writeFileSync(path.join(badJson, INDEX_FILE), '{"weight_map": {');
  expectError(() => Checkpoint.open(badJson), 'PGN_ERR_WEIGHTS_INDEX_INVALID', [path.join(badJson, INDEX_FILE), 'not valid JSON']);

  const noMap = freshDir('idx-nomap');
  writeSharded(noMap);
  fs.writeFileSync(path.join(noMap, INDEX_FILE), '{"metadata": {}}');
  expectError(() => Checkpoint.open(noMap), 'PGN_ERR_WEIGHTS_INDEX_INVALID', ['weight_map']);

  const noShard = freshDir('idx-noshard');
  writeSharded(noShard, { 'layers.0.q_proj.weight': 'model-00001-of-00003.safetensors' });
  expectError(() => Checkpoint.open(noShard), 'PGN_ERR_WEIGHTS_INDEX_INVALID', ['model-00001-of-00003.safetensors', "'layers.0.q_proj.weight'", noShard]);

  const wrongShard = freshDir('idx-wrong');
  writeSharded(wrongShard, { 'layers.0.q_proj.weight': 'model-00002-of-00002.safetensors' });
  expectError(() => Checkpoint.open(wrongShard), 'PGN_ERR_WEIGHTS_INDEX_INVALID', ["'layers.0.q_proj.weight'", 'model-00002-of-00002.safetensors']);
});

test('a broken shard surfaces its own error naming the shard file', () => {
  const dir = freshDir('badshard');
  writeSharded(dir);
  const shard2 = path.join(dir, 'model-00002-of-00002.safetensors');
  fs.truncateSync(shard2, fs.statSync(shard2).size - 1);
  expectError(() => Checkpoint.open(dir), 'PGN_ERR_WEIGHTS_TRUNCATED', [shard2, 'bytes [']);
});

test('FP8 tensors read raw; readF32 on them is PGN_ERR_WEIGHTS_DTYPE naming the tensor', () => {
  const dir = freshDir('fp8');
  writeSafetensors(path.join(dir, 'model.safetensors'), {
    'w.weight': { dtype: 'F8_E4M3', shape: [2, 2], data: new Uint8Array([0x38, 0xb8, 0x40, 0x00]) },
    'w.weight_scale': f32([], 0.5),
  });
  const ckpt = Checkpoint.open(dir);
  const raw = ckpt.read('w.weight');
  assert.equal(raw.dtype, 'F8_E4M3');
  assert.deepEqual([...raw.bytes], [0x38, 0xb8, 0x40, 0x00]);
  assert.deepEqual([...ckpt.readF32('w.weight_scale')], [0.5]);
  expectError(() => ckpt.readF32('w.weight'), 'PGN_ERR_WEIGHTS_DTYPE', ["'w.weight'", 'F8_E4M3']);
  ckpt.close();
});
