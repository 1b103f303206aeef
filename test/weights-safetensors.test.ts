import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { SafetensorsFile, writeSafetensors, toFloat32, storageBytesPerElement, type TensorToWrite } from '../src/weights/index.js';
import { isPeregrineError, type ErrorCode } from '../src/errors.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pgn-safetensors-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));
let fileCount = 0;
const freshPath = (stem: string) => path.join(tmp, `${stem}-${fileCount++}.safetensors`);

const u8 = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
const u16le = (...bits: number[]) => u8(new Uint16Array(bits));

/** Write a file by hand: 8-byte LE length (or `lengthOverride`), header text, data. */
function craft(file: string, header: object | string, data: Uint8Array, lengthOverride?: bigint): string {
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lengthOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  fs.writeFileSync(file, out);
  return file;
}

/** Run `fn`, expect a PeregrineError with `code` whose message contains every string in `parts`. */
function expectError(fn: () => unknown, code: ErrorCode, parts: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isPeregrineError(e), `not a PeregrineError: ${String(e)}`);
    assert.equal(e.code, code, e.message);
    for (const p of parts) assert.ok(e.message.includes(p), `message lacks '${p}': ${e.message}`);
    return true;
  });
}

test('round trip: every dtype reads back its bytes; F32/F16/BF16/I32/I8/U8 convert to the values written', () => {
  const tensors: Record<string, TensorToWrite> = {
    f32: { dtype: 'F32', shape: [2, 2], data: u8(new Float32Array([1, -2.5, 3.25, 1e-3])) },
    // f16 bits: 1.0, -2.5, 65504 (max finite), 2^-24 (smallest subnormal)
    f16: { dtype: 'F16', shape: [4], data: u16le(0x3c00, 0xc100, 0x7bff, 0x0001) },
    // bf16 bits: 1.0, -2.5, 3.140625 (pi rounded), -inf
    bf16: { dtype: 'BF16', shape: [2, 2], data: u16le(0x3f80, 0xc020, 0x4049, 0xff80) },
    i32: { dtype: 'I32', shape: [3], data: u8(new Int32Array([-7, 0, 123456])) },
    i8: { dtype: 'I8', shape: [3], data: u8(new Int8Array([-128, 0, 127])) },
    u8: { dtype: 'U8', shape: [1, 3], data: new Uint8Array([0, 1, 255]) },
    i64: { dtype: 'I64', shape: [2], data: u8(new BigInt64Array([-1n, 1n << 40n])) },
    e4m3: { dtype: 'F8_E4M3', shape: [3], data: new Uint8Array([0x38, 0xb8, 0x7e]) },
    e5m2: { dtype: 'F8_E5M2', shape: [2], data: new Uint8Array([0x3c, 0xbc]) },
    empty: { dtype: 'F32', shape: [0, 4], data: new Uint8Array(0) },
  };
  const file = freshPath('all');
  writeSafetensors(file, tensors, { format: 'pt', note: 'hello' });

  const st = SafetensorsFile.open(file);
  try {
    assert.deepEqual(st.metadata, { format: 'pt', note: 'hello' });
    assert.deepEqual(st.tensors().map((t) => t.name).sort(), Object.keys(tensors).sort());
    for (const [name, t] of Object.entries(tensors)) {
      const raw = st.read(name);
      assert.equal(raw.dtype, t.dtype);
      assert.deepEqual(raw.shape, t.shape);
      assert.deepEqual(raw.bytes, t.data, name);
      assert.equal(raw.bytes.byteOffset, 0, 'fresh buffer');
      const info = st.get(name)!;
      assert.equal(info.file, path.resolve(file));
      assert.equal(info.end - info.start, t.data.byteLength);
    }
    const f32 = (name: string) => [...toFloat32(st.get(name)!.dtype, st.read(name).bytes)];
    assert.deepEqual(f32('f32'), [1, -2.5, 3.25, Math.fround(1e-3)]);
    assert.deepEqual(f32('f16'), [1, -2.5, 65504, 2 ** -24]);
    assert.deepEqual(f32('bf16'), [1, -2.5, 3.140625, -Infinity]);
    assert.deepEqual(f32('i32'), [-7, 0, 123456]);
    assert.deepEqual(f32('i8'), [-128, 0, 127]);
    assert.deepEqual(f32('u8'), [0, 1, 255]);
    assert.deepEqual([...new BigInt64Array(st.read('i64').bytes.buffer)], [-1n, 1n << 40n]);
  } finally {
    st.close();
  }
});

test('writer aligns: header padded to 8 bytes with spaces, each tensor starts at a multiple of its element size', () => {
  const file = freshPath('align');
  writeSafetensors(file, {
    a: { dtype: 'U8', shape: [3], data: new Uint8Array(3) },
    b: { dtype: 'F32', shape: [1], data: new Uint8Array(4) },
    c: { dtype: 'BF16', shape: [3], data: new Uint8Array(6) },
    d: { dtype: 'I64', shape: [1], data: new Uint8Array(8) },
  });
  const bytes = fs.readFileSync(file);
  const headerLen = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  assert.equal((8 + headerLen) % 8, 0);
  assert.equal(bytes[8 + headerLen - 1], 0x20);
  const st = SafetensorsFile.open(file);
  for (const t of st.tensors()) assert.equal(t.start % storageBytesPerElement(t.dtype), 0, t.name);
  assert.deepEqual(st.tensors().map((t) => t.name), ['d', 'b', 'c', 'a'], 'byte order: widest dtype first');
  st.close();
});

test('reads a hand-written file laid out as in the spec (offsets relative to the byte after the header)', () => {
  const data = u8(new Float32Array([1, 2, 3, 4, 5, 6]));
  const header = {
    b: { dtype: 'F32', shape: [2], data_offsets: [16, 24] },
    a: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 16] },
    __metadata__: { format: 'pt' },
  };
  const file = craft(freshPath('spec'), JSON.stringify(header) + '   ', data);
  const st = SafetensorsFile.open(file);
  const headerLen = JSON.stringify(header).length + 3;
  assert.deepEqual(st.get('a'), { name: 'a', dtype: 'F32', shape: [2, 2], file: path.resolve(file), start: 8 + headerLen, end: 8 + headerLen + 16 });
  assert.deepEqual([...new Float32Array(st.read('b').bytes.buffer)], [5, 6]);
  assert.deepEqual(st.metadata, { format: 'pt' });
  st.close();
});

test('offsets beyond 4 GiB (sparse file): plain numbers, positioned reads', { skip: process.platform === 'win32' }, () => {
  const bigBytes = 5_000_000_000;
  const header = JSON.stringify({
    big: { dtype: 'U8', shape: [bigBytes], data_offsets: [0, bigBytes] },
    tail: { dtype: 'F32', shape: [2], data_offsets: [bigBytes, bigBytes + 8] },
  });
  const file = freshPath('sparse');
  craft(file, header, new Uint8Array(0));
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, u8(new Float32Array([7.5, -1])), 0, 8, 8 + header.length + bigBytes);
  fs.closeSync(fd);
  const st = SafetensorsFile.open(file);
  try {
    assert.equal(st.get('tail')!.start, 8 + header.length + bigBytes);
    assert.deepEqual([...new Float32Array(st.read('tail').bytes.buffer)], [7.5, -1]);
  } finally {
    st.close();
    fs.rmSync(file);
  }
});

test('missing tensor names the file and suggests close names; reads after close fail', () => {
  const file = freshPath('missing');
  writeSafetensors(file, { 'model.layers.0.self_attn.q_proj.weight': { dtype: 'F32', shape: [1], data: new Uint8Array(4) } });
  const st = SafetensorsFile.open(file);
  assert.equal(st.get('nope'), undefined);
  expectError(() => st.read('model.layers.0.self_attn.k_proj.weight'), 'PGN_ERR_WEIGHTS_MISSING_TENSOR', [
    'model.layers.0.self_attn.k_proj.weight',
    path.basename(file),
    "did you mean 'model.layers.0.self_attn.q_proj.weight'",
  ]);
  st.close();
  st.close();
  expectError(() => st.read('model.layers.0.self_attn.q_proj.weight'), 'PGN_ERR_INVALID_ARGUMENT', ['closed']);
});

test('file that does not exist -> PGN_ERR_WEIGHTS_NOT_FOUND naming it', () => {
  const file = path.join(tmp, 'absent.safetensors');
  expectError(() => SafetensorsFile.open(file), 'PGN_ERR_WEIGHTS_NOT_FOUND', [file]);
});

test('header length field itself truncated -> HEADER_TRUNCATED with the file size', () => {
  const file = freshPath('tiny');
  fs.writeFileSync(file, new Uint8Array([1, 2, 3]));
  expectError(() => SafetensorsFile.open(file), 'PGN_ERR_WEIGHTS_HEADER_TRUNCATED', [path.basename(file), 'file size 3 bytes']);
});

test('header length past the end of the file -> HEADER_TRUNCATED with header length and file size', () => {
  const header = { a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } };
  const file = craft(freshPath('hdrlen'), header, new Uint8Array(4), 1000n);
  const size = fs.statSync(file).size;
  expectError(() => SafetensorsFile.open(file), 'PGN_ERR_WEIGHTS_HEADER_TRUNCATED', [path.basename(file), 'header length 1000 bytes', `file size ${size} bytes`]);
  // a length over 2^53 is reported exactly, not rounded
  const huge = craft(freshPath('hdrhuge'), header, new Uint8Array(4), 0xffff_ffff_ffff_fff0n);
  expectError(() => SafetensorsFile.open(huge), 'PGN_ERR_WEIGHTS_HEADER_TRUNCATED', ['header length 18446744073709551600 bytes']);
});

test('header that is not JSON, not an object, or has a bad entry -> HEADER_INVALID naming the file (and tensor)', () => {
  const bad = craft(freshPath('badjson'), '{"a": {"dtype": "F32", "shape": [1], ', new Uint8Array(4));
  expectError(() => SafetensorsFile.open(bad), 'PGN_ERR_WEIGHTS_HEADER_INVALID', [path.basename(bad), 'not valid JSON', 'bytes [8, ']);
  const arr = craft(freshPath('array'), '[1, 2]', new Uint8Array(0));
  expectError(() => SafetensorsFile.open(arr), 'PGN_ERR_WEIGHTS_HEADER_INVALID', [path.basename(arr), 'not a JSON object']);
  const utf = freshPath('utf8');
  fs.writeFileSync(utf, new Uint8Array([3, 0, 0, 0, 0, 0, 0, 0, 0x7b, 0xff, 0x7d]));
  expectError(() => SafetensorsFile.open(utf), 'PGN_ERR_WEIGHTS_HEADER_INVALID', [path.basename(utf), 'UTF-8']);
  const shape = craft(freshPath('shape'), { w: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, new Uint8Array(4));
  expectError(() => SafetensorsFile.open(shape), 'PGN_ERR_WEIGHTS_HEADER_INVALID', [path.basename(shape), "'w'", 'shape']);
  const offs = craft(freshPath('offs'), { w: { dtype: 'F32', shape: [1], data_offsets: [4, 0] } }, new Uint8Array(4));
  expectError(() => SafetensorsFile.open(offs), 'PGN_ERR_WEIGHTS_HEADER_INVALID', [path.basename(offs), "'w'", 'data_offsets [4,0]']);
  const meta = craft(freshPath('meta'), { __metadata__: { n: 1 } }, new Uint8Array(0));
  expectError(() => SafetensorsFile.open(meta), 'PGN_ERR_WEIGHTS_HEADER_INVALID', [path.basename(meta), '__metadata__.n']);
});

test('overlapping tensors -> HEADER_INVALID naming both tensors and their byte ranges', () => {
  const header = { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } };
  const json = JSON.stringify(header);
  const file = craft(freshPath('overlap'), json, new Uint8Array(8));
  const base = 8 + json.length;
  expectError(() => SafetensorsFile.open(file), 'PGN_ERR_WEIGHTS_HEADER_INVALID', [
    path.basename(file),
    `'b' bytes [${base + 4}, ${base + 8})`,
    `'a' bytes [${base}, ${base + 8})`,
  ]);
});

test('unknown dtype -> PGN_ERR_WEIGHTS_DTYPE naming tensor and dtype and listing the known ones', () => {
  const file = craft(freshPath('dtype'), { 'lm_head.weight': { dtype: 'F4', shape: [2], data_offsets: [0, 1] } }, new Uint8Array(1));
  expectError(() => SafetensorsFile.open(file), 'PGN_ERR_WEIGHTS_DTYPE', [path.basename(file), "'lm_head.weight'", '"F4"', 'BF16', 'F8_E4M3']);
});

test('data_offsets that disagree with shape * itemsize -> PGN_ERR_WEIGHTS_SHAPE naming tensor, shape, dtype, range', () => {
  const json = JSON.stringify({ 'norm.weight': { dtype: 'BF16', shape: [3], data_offsets: [0, 8] } });
  const file = craft(freshPath('size'), json, new Uint8Array(8));
  const base = 8 + json.length;
  expectError(() => SafetensorsFile.open(file), 'PGN_ERR_WEIGHTS_SHAPE', [
    path.basename(file),
    "'norm.weight'",
    'shape [3] BF16',
    'needs 6 bytes',
    `bytes [${base}, ${base + 8})`,
  ]);
});

test('a valid file cut short -> PGN_ERR_WEIGHTS_TRUNCATED naming file, tensor, byte range and file size', () => {
  const file = freshPath('cut');
  writeSafetensors(file, {
    first: { dtype: 'F32', shape: [4], data: new Uint8Array(16) },
    last: { dtype: 'F32', shape: [4], data: new Uint8Array(16) },
  });
  const whole = SafetensorsFile.open(file);
  const last = whole.get('last')!;
  whole.close();
  fs.truncateSync(file, last.end - 3);
  expectError(() => SafetensorsFile.open(file), 'PGN_ERR_WEIGHTS_TRUNCATED', [
    path.basename(file),
    "'last'",
    `bytes [${last.start}, ${last.end})`,
    `file size ${last.end - 3} bytes`,
  ]);
});

test('writer rejects data whose length does not match the shape', () => {
  expectError(
    () => writeSafetensors(freshPath('wbad'), { w: { dtype: 'F16', shape: [2, 3], data: new Uint8Array(10) } }),
    'PGN_ERR_WEIGHTS_SHAPE',
    ["'w'", 'shape [2, 3] F16', 'needs 12 bytes'],
  );
});

test('toFloat32: typed-array fast path (aligned) and DataView path (unaligned) agree on every f16 and bf16 pattern', () => {
  const all = new Uint16Array(1 << 16).map((_, i) => i);
  const shifted = new Uint8Array(all.byteLength + 1).fill(0);
  shifted.set(u8(all), 1);
  for (const dtype of ['F16', 'BF16'] as const) {
    const fast = toFloat32(dtype, u8(all));
    const slow = toFloat32(dtype, shifted.subarray(1));
    // values, not bytes: the DataView path quiets signalling NaNs, the fast path keeps their bits
    assert.deepEqual([...fast], [...slow], dtype);
  }
  const vals = new Float32Array([0, -0, 1.5, -3e38, NaN, Infinity]);
  const shiftedF32 = new Uint8Array(25);
  shiftedF32.set(u8(vals), 1);
  assert.deepEqual([...toFloat32('F32', u8(vals))], [...toFloat32('F32', shiftedF32.subarray(1))]);
});
