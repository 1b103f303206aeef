/**
 * Writes one safetensors file. Tensors are laid out widest dtype first (stable otherwise)
 * after a header padded with spaces to a multiple of 8 bytes, so every tensor starts
 * aligned to its element size, as the reference Rust writer does. The file is written
 * under a temporary name and renamed into place, so a crash never leaves a half file.
 */
import * as fs from 'node:fs';
import { PeregrineError } from '../errors.js';
import type { StorageDType } from '../backends/backend.js';
import { isStorageDType, storageBytesPerElement } from './dtype.js';
import { HEADER_LENGTH_BYTES, METADATA_KEY } from './safetensors.js';

export interface TensorToWrite {
  dtype: StorageDType;
  shape: number[];
  /** little-endian element bytes, row-major */
  data: Uint8Array;
}

const HEADER_ALIGN_BYTES = 8;
const MAX_WRITE_CHUNK_BYTES = 1 << 30;

/**
 * Write `tensors` (and optional string `metadata`) to `path` in safetensors format.
 * @throws PeregrineError PGN_ERR_WEIGHTS_SHAPE when a tensor's data length is not numel * itemsize,
 *   PGN_ERR_WEIGHTS_DTYPE for an unknown dtype, PGN_ERR_INVALID_ARGUMENT for a bad shape or name.
 * @example writeSafetensors('/tmp/m/model.safetensors', { 'w': { dtype: 'F32', shape: [2], data } }, { format: 'pt' })
 */
export function writeSafetensors(path: string, tensors: Record<string, TensorToWrite>, metadata?: Record<string, string>): void {
  const order = Object.entries(tensors)
    .map(([name, t], i) => ({ name, t, i }))
    .sort((a, b) => storageBytesPerElement(b.t.dtype) - storageBytesPerElement(a.t.dtype) || a.i - b.i);

  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) header[METADATA_KEY] = { ...metadata };
  let offset = 0;
  for (const { name, t } of order) {
    checkTensor(path, name, t);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }

  const json = new TextEncoder().encode(JSON.stringify(header));
  const paddedLength = Math.ceil((HEADER_LENGTH_BYTES + json.length) / HEADER_ALIGN_BYTES) * HEADER_ALIGN_BYTES - HEADER_LENGTH_BYTES;
  const head = new Uint8Array(HEADER_LENGTH_BYTES + paddedLength).fill(0x20);
  new DataView(head.buffer).setBigUint64(0, BigInt(paddedLength), true);
  head.set(json, HEADER_LENGTH_BYTES);

  const tmp = `${path}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w');
  try {
    let pos = writeAll(fd, head, 0);
    for (const { t } of order) pos = writeAll(fd, t.data, pos);
    fs.closeSync(fd);
    fs.renameSync(tmp, path);
  } catch (e) {
    try { fs.closeSync(fd); } catch { /* already closed */ }
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

function checkTensor(path: string, name: string, t: TensorToWrite): void {
  if (name === METADATA_KEY) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `${path}: '${METADATA_KEY}' cannot name a tensor`, { file: path });
  if (!isStorageDType(t.dtype)) throw new PeregrineError('PGN_ERR_WEIGHTS_DTYPE', `${path}: tensor '${name}' has unknown dtype ${JSON.stringify(t.dtype)}`, { file: path, tensor: name });
  if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `${path}: tensor '${name}' has invalid shape [${t.shape.join(', ')}]`, { file: path, tensor: name });
  }
  const expectBytes = t.shape.reduce((a, b) => a * b, 1) * storageBytesPerElement(t.dtype);
  if (expectBytes !== t.data.byteLength) {
    throw new PeregrineError(
      'PGN_ERR_WEIGHTS_SHAPE',
      `${path}: tensor '${name}' shape [${t.shape.join(', ')}] ${t.dtype} needs ${expectBytes} bytes, data has ${t.data.byteLength}`,
      { file: path, tensor: name, shape: t.shape, dtype: t.dtype },
    );
  }
}

/** Write all of `data` at `pos` (in pieces: writeSync takes an int32 length); returns the next position. */
function writeAll(fd: number, data: Uint8Array, pos: number): number {
  let done = 0;
  while (done < data.byteLength) {
    done += fs.writeSync(fd, data, done, Math.min(data.byteLength - done, MAX_WRITE_CHUNK_BYTES), pos + done);
  }
  return pos + data.byteLength;
}
