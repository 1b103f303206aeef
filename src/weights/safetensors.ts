/**
 * Reader for one safetensors file: an 8-byte little-endian u64 header length, a JSON
 * header (`{name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {..}}`),
 * then the tensor data; offsets are relative to the first byte after the header.
 * Spec: https://github.com/huggingface/safetensors#format
 *
 * Only the header is read at open; each `read` pulls one tensor with `readSync` at an
 * absolute position, so a multi-GB file never sits in the JS heap and offsets past
 * 4 GiB work (plain numbers, exact up to 2^53).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PeregrineError } from '../errors.js';
import type { StorageDType } from '../backends/backend.js';
import { STORAGE_DTYPES, isStorageDType, storageBytesPerElement } from './dtype.js';

export interface TensorInfo {
  name: string;
  dtype: StorageDType;
  shape: number[];
  file: string;
  /** absolute byte offsets in file */
  start: number;
  end: number;
}

export interface RawTensor {
  name: string;
  dtype: StorageDType;
  shape: number[];
  bytes: Uint8Array;
}

export const HEADER_LENGTH_BYTES = 8;
/** The spec caps the JSON header at 100 MB. */
export const MAX_HEADER_BYTES = 100_000_000;
export const METADATA_KEY = '__metadata__';
/** fs.readSync takes an int32 length; read big tensors in pieces of this size. */
const MAX_READ_CHUNK_BYTES = 1 << 30;

export class SafetensorsFile {
  readonly path: string;
  readonly metadata: Record<string, string>;
  readonly fileSizeBytes: number;
  private fd: number | undefined;
  private readonly infos: Map<string, TensorInfo>;

  private constructor(filePath: string, fd: number, fileSizeBytes: number, metadata: Record<string, string>, infos: TensorInfo[]) {
    this.path = filePath;
    this.fd = fd;
    this.fileSizeBytes = fileSizeBytes;
    this.metadata = metadata;
    this.infos = new Map(infos.map((t) => [t.name, t]));
  }

  /** Open `filePath` and read and validate its header; the data stays on disk. */
  static open(filePath: string): SafetensorsFile {
    const file = path.resolve(filePath);
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch (e) {
      throw new PeregrineError('PGN_ERR_WEIGHTS_NOT_FOUND', `cannot open safetensors file ${file}: ${(e as Error).message}`, { file }, { cause: e });
    }
    try {
      const fileSizeBytes = fs.fstatSync(fd).size;
      const header = readHeader(fd, file, fileSizeBytes);
      const dataStart = HEADER_LENGTH_BYTES + header.lengthBytes;
      const { metadata, infos } = parseHeader(header.json, file, dataStart, fileSizeBytes);
      return new SafetensorsFile(file, fd, fileSizeBytes, metadata, infos);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /** All tensors, in the order their bytes sit in the file. */
  tensors(): TensorInfo[] {
    return [...this.infos.values()];
  }

  get(name: string): TensorInfo | undefined {
    return this.infos.get(name);
  }

  /** Read one tensor into a fresh buffer (offset 0 of its own ArrayBuffer, so any typed view fits). */
  read(name: string): RawTensor {
    const info = this.require(name);
    const bytes = new Uint8Array(info.end - info.start);
    this.readInto(name, bytes);
    return { name, dtype: info.dtype, shape: [...info.shape], bytes };
  }

  /** Read one tensor's bytes into `dst` (exactly its size); lets callers fill one buffer from several tensors. */
  readInto(name: string, dst: Uint8Array): void {
    const info = this.require(name);
    const numBytes = info.end - info.start;
    if (dst.byteLength !== numBytes) {
      throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `readInto '${name}': destination holds ${dst.byteLength} bytes, tensor has ${numBytes}`, { tensor: name });
    }
    const fd = this.openFd();
    let done = 0;
    while (done < numBytes) {
      const chunk = Math.min(numBytes - done, MAX_READ_CHUNK_BYTES);
      const got = fs.readSync(fd, dst, done, chunk, info.start + done);
      if (got === 0) {
        throw new PeregrineError(
          'PGN_ERR_WEIGHTS_TRUNCATED',
          `${this.path}: tensor '${name}' ${fmtRange(info.start, info.end)} ended early at byte ${info.start + done} (file shrank after open?)`,
          { file: this.path, tensor: name, start: info.start, end: info.end },
        );
      }
      done += got;
    }
  }

  close(): void {
    if (this.fd === undefined) return;
    fs.closeSync(this.fd);
    this.fd = undefined;
  }

  private require(name: string): TensorInfo {
    const info = this.infos.get(name);
    if (!info) throw missingTensorError(name, this.path, this.infos.keys());
    return info;
  }

  private openFd(): number {
    if (this.fd === undefined) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `${this.path} was closed`, { file: this.path });
    return this.fd;
  }
}

/** `bytes [start, end)` with absolute offsets, the form every weights error uses. */
export function fmtRange(start: number, end: number): string {
  return `bytes [${start}, ${end})`;
}

/** MISSING_TENSOR error naming `where` (file or folder) and up to three close names. */
export function missingTensorError(name: string, where: string, candidates: Iterable<string>): PeregrineError {
  const close = closeNames(name, candidates);
  const hint = close.length ? `; did you mean ${close.map((c) => `'${c}'`).join(', ')}?` : '';
  return new PeregrineError('PGN_ERR_WEIGHTS_MISSING_TENSOR', `tensor '${name}' not found in ${where}${hint}`, { tensor: name, where, suggestions: close });
}

function closeNames(name: string, candidates: Iterable<string>, maxCount = 3): string[] {
  const maxDist = Math.max(2, Math.floor(name.length * 0.3));
  const scored: { c: string; d: number }[] = [];
  for (const c of candidates) {
    if (c.endsWith(name) || name.endsWith(c)) scored.push({ c, d: 0 });
    else if (Math.abs(c.length - name.length) <= maxDist) {
      const d = editDistance(name, c);
      if (d <= maxDist) scored.push({ c, d });
    }
  }
  return scored.sort((a, b) => a.d - b.d || (a.c < b.c ? -1 : 1)).slice(0, maxCount).map((s) => s.c);
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = row;
  }
  return prev[b.length]!;
}

function readHeader(fd: number, file: string, fileSizeBytes: number): { lengthBytes: number; json: string } {
  if (fileSizeBytes < HEADER_LENGTH_BYTES) {
    throw new PeregrineError(
      'PGN_ERR_WEIGHTS_HEADER_TRUNCATED',
      `${file}: file size ${fileSizeBytes} bytes is smaller than the ${HEADER_LENGTH_BYTES}-byte header length field`,
      { file, fileSizeBytes },
    );
  }
  const lenBuf = new Uint8Array(HEADER_LENGTH_BYTES);
  fs.readSync(fd, lenBuf, 0, HEADER_LENGTH_BYTES, 0);
  const lengthBig = new DataView(lenBuf.buffer).getBigUint64(0, true);
  const available = fileSizeBytes - HEADER_LENGTH_BYTES;
  if (lengthBig > BigInt(available)) {
    throw new PeregrineError(
      'PGN_ERR_WEIGHTS_HEADER_TRUNCATED',
      `${file}: header length ${lengthBig} bytes runs past the end of the file (file size ${fileSizeBytes} bytes, ` +
        `header would span ${fmtRange(HEADER_LENGTH_BYTES, HEADER_LENGTH_BYTES + Number(lengthBig))})`,
      { file, headerLengthBytes: lengthBig.toString(), fileSizeBytes },
    );
  }
  const lengthBytes = Number(lengthBig);
  if (lengthBytes > MAX_HEADER_BYTES) {
    throw new PeregrineError('PGN_ERR_WEIGHTS_HEADER_INVALID', `${file}: header length ${lengthBytes} bytes exceeds the ${MAX_HEADER_BYTES}-byte limit of the format`, {
      file,
      headerLengthBytes: lengthBytes,
    });
  }
  const headerBuf = new Uint8Array(lengthBytes);
  fs.readSync(fd, headerBuf, 0, lengthBytes, HEADER_LENGTH_BYTES);
  let json: string;
  try {
    json = new TextDecoder('utf-8', { fatal: true }).decode(headerBuf);
  } catch (e) {
    throw headerInvalid(file, `header ${fmtRange(HEADER_LENGTH_BYTES, HEADER_LENGTH_BYTES + lengthBytes)} is not valid UTF-8`, e);
  }
  return { lengthBytes, json };
}

function parseHeader(json: string, file: string, dataStart: number, fileSizeBytes: number): { metadata: Record<string, string>; infos: TensorInfo[] } {
  let header: unknown;
  try {
    header = JSON.parse(json);
  } catch (e) {
    throw headerInvalid(file, `header ${fmtRange(HEADER_LENGTH_BYTES, dataStart)} is not valid JSON (${(e as Error).message})`, e);
  }
  if (!isPlainObject(header)) throw headerInvalid(file, 'header is not a JSON object');

  const metadata = parseMetadata(header[METADATA_KEY], file);
  const infos: TensorInfo[] = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === METADATA_KEY) continue;
    infos.push(parseEntry(name, entry, file, dataStart, fileSizeBytes));
  }
  infos.sort((a, b) => a.start - b.start || a.end - b.end);
  for (let i = 1; i < infos.length; i++) {
    const prev = infos[i - 1]!;
    const cur = infos[i]!;
    if (cur.start < prev.end) {
      throw headerInvalid(
        file,
        `tensor '${cur.name}' ${fmtRange(cur.start, cur.end)} overlaps tensor '${prev.name}' ${fmtRange(prev.start, prev.end)}`,
      );
    }
  }
  return { metadata, infos };
}

function parseMetadata(raw: unknown, file: string): Record<string, string> {
  if (raw === undefined || raw === null) return {};
  if (!isPlainObject(raw)) throw headerInvalid(file, `'${METADATA_KEY}' is not an object of strings`);
  const metadata: Record<string, string> = {};
  for (const [k, v] of Object.entries(raw)) {
    if (typeof v !== 'string') throw headerInvalid(file, `'${METADATA_KEY}.${k}' is not a string`);
    metadata[k] = v;
  }
  return metadata;
}

function parseEntry(name: string, entry: unknown, file: string, dataStart: number, fileSizeBytes: number): TensorInfo {
  if (!isPlainObject(entry)) throw headerInvalid(file, `entry for tensor '${name}' is not an object`);
  const { dtype, shape, data_offsets: offsets } = entry;
  if (!isStorageDType(dtype)) {
    throw new PeregrineError(
      'PGN_ERR_WEIGHTS_DTYPE',
      `${file}: tensor '${name}' has unknown dtype ${JSON.stringify(dtype)}; known dtypes: ${STORAGE_DTYPES.join(', ')}`,
      { file, tensor: name, dtype },
    );
  }
  if (!Array.isArray(shape) || !shape.every(isNonNegativeInt)) {
    throw headerInvalid(file, `tensor '${name}' has invalid shape ${JSON.stringify(shape)} (want an array of non-negative integers)`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegativeInt) || offsets[0] > offsets[1]) {
    throw headerInvalid(file, `tensor '${name}' has invalid data_offsets ${JSON.stringify(offsets)} (want [begin, end] with 0 <= begin <= end)`);
  }
  const start = dataStart + (offsets[0] as number);
  const end = dataStart + (offsets[1] as number);
  const numel = shape.reduce((a: number, b: number) => a * b, 1);
  const expectBytes = numel * storageBytesPerElement(dtype);
  if (expectBytes !== end - start) {
    throw new PeregrineError(
      'PGN_ERR_WEIGHTS_SHAPE',
      `${file}: tensor '${name}' shape [${shape.join(', ')}] ${dtype} needs ${expectBytes} bytes but its data_offsets span ` +
        `${end - start} bytes (${fmtRange(start, end)})`,
      { file, tensor: name, shape, dtype, start, end },
    );
  }
  if (end > fileSizeBytes) {
    throw new PeregrineError(
      'PGN_ERR_WEIGHTS_TRUNCATED',
      `${file}: tensor '${name}' ${fmtRange(start, end)} runs past the end of the file (file size ${fileSizeBytes} bytes); the file is truncated`,
      { file, tensor: name, start, end, fileSizeBytes },
    );
  }
  return { name, dtype, shape: shape as number[], file, start, end };
}

function headerInvalid(file: string, what: string, cause?: unknown): PeregrineError {
  return new PeregrineError('PGN_ERR_WEIGHTS_HEADER_INVALID', `${file}: invalid safetensors header: ${what}`, { file }, { cause });
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isNonNegativeInt(v: unknown): v is number {
  return Number.isSafeInteger(v) && (v as number) >= 0;
}
