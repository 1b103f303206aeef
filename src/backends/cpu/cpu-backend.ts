/**
 * The CPU reference backend: plain TypeScript over Float32Array / Int32Array.
 * Every float tensor is stored and computed in f32 (asking for bf16/f16 gives f32);
 * ops run synchronously, so `synchronize` and the downloads resolve at once.
 */
import type {
  AttentionMetadata, AttentionParams, Backend, DType, GeluApprox, LayerKvCache, QkNormParams, RopeParams, StorageDType, Tensor,
} from '../backend.js';
import { storageBytesPerElement, toFloat32 } from '../../weights/dtype.js';
import { asCpu, checkShape, CpuTensor, f32Of, i32Of, internal } from './cpu-tensor.js';
import * as act from './ops/activations.js';
import * as attn from './ops/attention.js';
import * as elementwise from './ops/elementwise.js';
import * as gemm from './ops/gemm.js';
import { quantLinear } from './ops/quant-linear.js';
import { isQuantizedWeight, type QuantizedWeight } from '../backend.js';
import * as moe from './ops/moe.js';
import * as norm from './ops/norm.js';
import * as rope from './ops/rope.js';
import * as rows from './ops/rows.js';

export { cpuData, CpuTensor } from './cpu-tensor.js';

export class CpuBackend implements Backend {
  readonly device = 'cpu' as const;
  readonly activationDtype: DType = 'f32';

  // ---- memory ----------------------------------------------------------------
  empty(shape: readonly number[], dtype: DType): Tensor {
    const n = checkShape(shape, 'empty');
    return new CpuTensor(shape, dtype === 'i32' ? new Int32Array(n) : new Float32Array(n));
  }

  free(t: Tensor): void {
    asCpu(t, 'free', 'tensor').release();
  }

  view(t: Tensor, shape: readonly number[]): Tensor {
    const n = checkShape(shape, 'view');
    const data = asCpu(t, 'view', 'tensor').data;
    if (n > data.length) throw internal(`view: shape [${shape.join(', ')}] needs ${n} elements, tensor [${t.shape.join(', ')}] has ${data.length}`, { shape, from: t.shape });
    return new CpuTensor(shape, data.subarray(0, n));
  }

  fromBytes(shape: readonly number[], src: StorageDType, bytes: Uint8Array, dtype: DType): Tensor {
    const n = checkShape(shape, 'fromBytes');
    if (bytes.byteLength % storageBytesPerElement(src) !== 0) {
      throw internal(`fromBytes: ${bytes.byteLength} bytes is not a whole number of ${src} elements`, { shape, src, byteLength: bytes.byteLength });
    }
    const data = dtype === 'i32' ? bytesToI32(src, bytes) : bytesToF32(src, bytes);
    if (data.length !== n) {
      throw internal(`fromBytes: ${bytes.byteLength} bytes of ${src} hold ${data.length} elements, shape [${shape.join(', ')}] needs ${n}`, { shape, src, byteLength: bytes.byteLength });
    }
    return new CpuTensor(shape, data);
  }

  fromF32(shape: readonly number[], data: Float32Array, dtype: DType = 'f32'): Tensor {
    const n = checkShape(shape, 'fromF32');
    if (dtype === 'i32') throw internal('fromF32: cannot store f32 data as i32 (use fromI32)');
    if (data.length !== n) throw internal(`fromF32: ${data.length} values for shape [${shape.join(', ')}] (${n} elements)`, { shape, length: data.length });
    return new CpuTensor(shape, Float32Array.from(data));
  }

  fromI32(shape: readonly number[], data: Int32Array): Tensor {
    const n = checkShape(shape, 'fromI32');
    if (data.length !== n) throw internal(`fromI32: ${data.length} values for shape [${shape.join(', ')}] (${n} elements)`, { shape, length: data.length });
    return new CpuTensor(shape, Int32Array.from(data));
  }

  writeF32(dst: Tensor, data: Float32Array): void {
    const d = f32Of(dst, 'writeF32', 'dst');
    if (data.length > d.length) throw internal(`writeF32: ${data.length} values do not fit tensor [${dst.shape.join(', ')}]`, { shape: dst.shape, length: data.length });
    d.set(data);
  }

  writeI32(dst: Tensor, data: Int32Array): void {
    const d = i32Of(dst, 'writeI32', 'dst');
    if (data.length > d.length) throw internal(`writeI32: ${data.length} values do not fit tensor [${dst.shape.join(', ')}]`, { shape: dst.shape, length: data.length });
    d.set(data);
  }

  writeI32Rows(dst: Tensor, data: Int32Array, rows: number, width: number, dstStride: number): void {
    const d = i32Of(dst, 'writeI32Rows', 'dst');
    if (width > dstStride || rows * width > data.length || rows * dstStride > d.length) {
      throw internal(`writeI32Rows: ${rows} rows of ${width} (stride ${dstStride}) do not fit data of ${data.length} or tensor [${dst.shape.join(', ')}]`, { shape: dst.shape, rows, width, dstStride });
    }
    for (let r = 0; r < rows; r++) d.set(data.subarray(r * width, (r + 1) * width), r * dstStride);
  }

  async downloadF32(t: Tensor): Promise<Float32Array> {
    return Float32Array.from(asCpu(t, 'downloadF32', 'tensor').data);
  }

  async downloadI32(t: Tensor): Promise<Int32Array> {
    return Int32Array.from(i32Of(t, 'downloadI32', 'tensor'));
  }

  async synchronize(): Promise<void> {}

  dispose(): void {}

  // ---- ops -------------------------------------------------------------------------
  embedding(out: Tensor, table: Tensor, ids: Tensor, numTokens: number): void {
    rows.embedding(out, table, ids, numTokens);
  }

  embeddingShard(out: Tensor, table: Tensor, ids: Tensor, numTokens: number, vocabStart: number): void {
    rows.embeddingShard(out, table, ids, numTokens, vocabStart);
  }

  rmsNorm(out: Tensor, x: Tensor, weight: Tensor, eps: number, numTokens: number, residual?: Tensor | null, weightOffset?: number): void {
    norm.rmsNorm(out, x, weight, eps, numTokens, residual, weightOffset);
  }

  layerNorm(out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | null, eps: number, numTokens: number, residual?: Tensor | null): void {
    norm.layerNorm(out, x, weight, bias, eps, numTokens, residual);
  }

  linear(out: Tensor, x: Tensor, w: Tensor | QuantizedWeight, bias: Tensor | null, numTokens: number): void {
    if (isQuantizedWeight(w)) quantLinear(out, x, w, bias, numTokens);
    else gemm.linear(out, x, w, bias, numTokens);
  }

  ropeWriteKv(qkv: Tensor, positions: Tensor, cosSin: Tensor | null, cache: LayerKvCache, slotMapping: Tensor, numTokens: number, p: RopeParams): void {
    rope.ropeWriteKv(qkv, positions, cosSin, cache, slotMapping, numTokens, p);
  }

  attention(out: Tensor, qkv: Tensor, cache: LayerKvCache, meta: AttentionMetadata, p: AttentionParams): void {
    attn.attention(out, qkv, cache, meta, p);
  }

  siluMul(out: Tensor, gateUp: Tensor, numTokens: number): void {
    act.siluMul(out, gateUp, numTokens);
  }

  geluMul(out: Tensor, gateUp: Tensor, numTokens: number, approx: GeluApprox): void {
    act.geluMul(out, gateUp, numTokens, approx);
  }

  gelu(out: Tensor, x: Tensor, numTokens: number, approx: GeluApprox): void {
    act.gelu(out, x, numTokens, approx);
  }

  relu(out: Tensor, x: Tensor, numTokens: number): void {
    act.relu(out, x, numTokens);
  }

  add(out: Tensor, a: Tensor, b: Tensor, numTokens: number): void {
    rows.add(out, a, b, numTokens);
  }

  gatherRows(out: Tensor, x: Tensor, indices: Tensor, numRows: number): void {
    rows.gatherRows(out, x, indices, numRows);
  }

  copy(out: Tensor, x: Tensor, numTokens: number): void {
    rows.copy(out, x, numTokens);
  }

  gatherTokenIds(tokenIds: Tensor, src: Tensor, srcIndex: Tensor, numTokens: number): void {
    rows.gatherTokenIds(tokenIds, src, srcIndex, numTokens);
  }

  scale(out: Tensor, x: Tensor, factor: number, numTokens: number): void {
    elementwise.scale(out, x, factor, numTokens);
  }

  softcap(out: Tensor, x: Tensor, cap: number, numTokens: number): void {
    elementwise.softcap(out, x, cap, numTokens);
  }

  clamp(out: Tensor, x: Tensor, min: number, max: number, numTokens: number): void {
    elementwise.clamp(out, x, min, max, numTokens);
  }

  qkRmsNorm(qkv: Tensor, qWeight: Tensor, kWeight: Tensor, eps: number, numTokens: number, p: QkNormParams): void {
    norm.qkRmsNorm(qkv, qWeight, kWeight, eps, numTokens, p);
  }

  moeRoute(topkIds: Tensor, topkWeights: Tensor, routerLogits: Tensor, numTokens: number, topK: number, renormalize: boolean): void {
    moe.moeRoute(topkIds, topkWeights, routerLogits, numTokens, topK, renormalize);
  }

  moeExperts(out: Tensor, x: Tensor, gateUp: Tensor, down: Tensor, topkIds: Tensor, topkWeights: Tensor, numTokens: number): void {
    moe.moeExperts(out, x, gateUp, down, topkIds, topkWeights, numTokens);
  }
}

/** Little-endian bytes -> f32; aligned F32 is copied directly. */
function bytesToF32(src: StorageDType, bytes: Uint8Array): Float32Array {
  if (src === 'F32' && bytes.byteOffset % 4 === 0 && bytes.byteLength % 4 === 0) {
    return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4).slice();
  }
  return toFloat32(src, bytes);
}

/** Little-endian I32 / I64 bytes -> i32 (I64 values must fit in 32 bits). */
function bytesToI32(src: StorageDType, bytes: Uint8Array): Int32Array {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (src === 'I32') {
    const out = new Int32Array(Math.floor(bytes.byteLength / 4));
    for (let i = 0; i < out.length; i++) out[i] = dv.getInt32(i * 4, true);
    return out;
  }
  if (src === 'I64') {
    const out = new Int32Array(Math.floor(bytes.byteLength / 8));
    for (let i = 0; i < out.length; i++) {
      const v = dv.getBigInt64(i * 8, true);
      if (v > 2147483647n || v < -2147483648n) throw internal(`fromBytes: I64 value ${v} at element ${i} does not fit in i32`, { index: i });
      out[i] = Number(v);
    }
    return out;
  }
  throw internal(`fromBytes: cannot store ${src} data as i32`, { src });
}
