/** Reading the tensors of one quantized module (`<module>.qweight`, `<module>.weight_scale`, ...). */
import { PeregrineError } from '../../errors.js';
import type { StorageDType } from '../../backends/backend.js';
import type { Checkpoint } from '../checkpoint.js';
import type { TensorInfo } from '../safetensors.js';
import { bytesToWords } from './types.js';

export const WEIGHT_SUFFIX = '.weight';

/** 'model.layers.0.self_attn.q_proj.weight' -> 'model.layers.0.self_attn.q_proj'; null for other names. */
export function moduleOf(hfName: string): string | null {
  return hfName.endsWith(WEIGHT_SUFFIX) ? hfName.slice(0, -WEIGHT_SUFFIX.length) : null;
}

export interface Read<T> {
  readonly data: T;
  readonly shape: readonly number[];
  readonly info: TensorInfo;
}

/** An I32 tensor as words (GPTQ / AWQ qweight, qzeros, compressed-tensors weight_packed). */
export function readWords(ckpt: Checkpoint, name: string): Read<Int32Array> {
  const info = requireDtype(ckpt, name, ['I32']);
  return { data: bytesToWords(ckpt.read(name).bytes), shape: info.shape, info };
}

/** A float tensor (F32 / F16 / BF16) as f32: scales, zero points. */
export function readFloats(ckpt: Checkpoint, name: string): Read<Float32Array> {
  const info = requireDtype(ckpt, name, ['F32', 'F16', 'BF16', 'F64']);
  return { data: ckpt.readF32(name), shape: info.shape, info };
}

/** An integer tensor (I32 / I64 / I8 / U8) as numbers: g_idx, weight_shape, integer zero points. */
export function readInts(ckpt: Checkpoint, name: string): Read<number[]> {
  const info = requireDtype(ckpt, name, ['I32', 'I64', 'I8', 'U8']);
  const raw = ckpt.read(name);
  const dv = new DataView(raw.bytes.buffer, raw.bytes.byteOffset, raw.bytes.byteLength);
  const n = info.shape.reduce((a, b) => a * b, 1);
  const data = Array.from({ length: n }, (_, i) => {
    switch (info.dtype) {
      case 'I64': return Number(dv.getBigInt64(i * 8, true));
      case 'I32': return dv.getInt32(i * 4, true);
      case 'I8': return dv.getInt8(i);
      default: return dv.getUint8(i);
    }
  });
  return { data, shape: info.shape, info };
}

export function requireDtype(ckpt: Checkpoint, name: string, dtypes: readonly StorageDType[]): TensorInfo {
  const info = ckpt.info(name);
  if (!dtypes.includes(info.dtype)) {
    throw new PeregrineError(
      'PGN_ERR_WEIGHTS_DTYPE',
      `${info.file}: tensor '${name}' is ${info.dtype}; a quantized module needs ${dtypes.join(' or ')} here`,
      { file: info.file, tensor: name, dtype: info.dtype },
    );
  }
  return info;
}

/** PGN_ERR_WEIGHTS_SHAPE naming the tensor, its file and the shape it should have. */
export function quantShapeError(info: TensorInfo, want: string): PeregrineError {
  return new PeregrineError(
    'PGN_ERR_WEIGHTS_SHAPE',
    `${info.file}: tensor '${info.name}' has shape [${info.shape.join(', ')}], expected ${want}`,
    { file: info.file, tensor: info.name, shape: info.shape },
  );
}

export function requireShape(info: TensorInfo, want: readonly number[]): void {
  if (info.shape.length !== want.length || info.shape.some((d, i) => d !== want[i])) throw quantShapeError(info, `[${want.join(', ')}]`);
}

export function numelOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}
