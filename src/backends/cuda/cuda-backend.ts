/**
 * The CUDA backend: tensors in device memory (caching allocator), every op queued on one
 * stream (our kernels and cuBLASLt), CUDA-graph capture and replay for decode steps.
 *
 * ```ts
 * if (CudaBackend.isAvailable()) {
 *   const be = CudaBackend.create({ deviceId: 0 });
 *   const x = be.fromF32([2, 4096], data, 'bf16');
 * }
 * ```
 */
import { PeregrineError } from '../../errors.js';
import {
  bytesPerElement, numel, type AttentionMetadata, type AttentionParams, type Backend, type DType, type Fp8Activations, type GeluApprox,
  type LayerKvCache, type LinearFusion, type QkNormParams, type QuantizedWeight, type RopeParams, type StorageDType, type Tensor,
} from '../backend.js';
import { CachingAllocator, type AllocatorStats } from './allocator.js';
import { CublasLt } from './cublaslt.js';
import { attention, type AttentionWorkspace } from './cuda-attention.js';
import { moeExperts, moeRoute, Scratch } from './cuda-moe.js';
import * as ops from './cuda-ops.js';
import { asCuda, CudaTensor } from './cuda-tensor.js';
import { cudaUnavailableReason, CudaDevice, type DeviceProps } from './device.js';
import { check, CU_MEMORYTYPE_DEVICE, CU_MEMORYTYPE_HOST } from './driver.js';
import { beginCapture, endCapture, CudaGraph } from './graph.js';
import { CudaSampler, MAX_TOP_LOGPROBS } from './cuda-sampler.js';
import { convertStorage, decodeToF32, encodeF32 } from './host-convert.js';
import { loadKernels } from './kernel-image.js';
import { CudaKernels } from './kernels.js';
import { disposeQuant, quantLinear } from './cuda-quant.js';
import { rmsNormFp8, siluMulFp8 } from './cuda-quant-norm.js';
import { invalid } from './op-checks.js';
import { CudaEvent, CudaStream } from './stream.js';
import { PinnedBuffer } from './pinned.js';
import { gatherTokenIds } from './cuda-tokens.js';

export { CudaGraph } from './graph.js';
export { CudaTensor } from './cuda-tensor.js';
export { CudaSampler } from './cuda-sampler.js';
export { PinnedBuffer } from './pinned.js';

export interface CudaBackendOptions {
  /** CUDA device ordinal (default 0) */
  readonly deviceId?: number;
  /** dtype of activations (default 'bf16') */
  readonly activationDtype?: 'bf16' | 'f16';
  /** cuBLASLt workspace (default 32 MiB) */
  readonly gemmWorkspaceBytes?: number;
  /** scratch for split decode attention (default 32 MiB) */
  readonly attentionWorkspaceBytes?: number;
}

const MiB = 1 << 20;

export class CudaBackend implements Backend {
  readonly device = 'cuda' as const;
  readonly activationDtype: DType;
  readonly dev: CudaDevice;
  readonly stream: CudaStream;
  readonly allocator: CachingAllocator;
  readonly kernels: CudaKernels;
  readonly #ctx: ops.OpContext;
  readonly #blas: CublasLt;
  readonly #gemmWorkspace: number;
  readonly #attnWorkspace: AttentionWorkspace;
  readonly #moeScratch: Scratch;
  #disposed = false;

  private constructor(dev: CudaDevice, opts: CudaBackendOptions) {
    this.dev = dev;
    this.activationDtype = opts.activationDtype ?? 'bf16';
    this.stream = new CudaStream(dev.drv);
    this.allocator = new CachingAllocator(dev.drv);
    const { module, origin } = loadKernels(dev);
    this.kernels = new CudaKernels(module, origin);
    const gemmBytes = opts.gemmWorkspaceBytes ?? 32 * MiB;
    this.#gemmWorkspace = this.allocator.alloc(gemmBytes);
    this.#blas = new CublasLt(this.#gemmWorkspace, gemmBytes, Math.floor(dev.props.driverVersion / 1000));
    const attnBytes = opts.attentionWorkspaceBytes ?? 32 * MiB;
    this.#attnWorkspace = { ptr: this.allocator.alloc(attnBytes), sizeBytes: attnBytes };
    this.#moeScratch = new Scratch(this.allocator);
    this.#ctx = { drv: dev.drv, kernels: this.kernels, stream: this.stream, blas: this.#blas, numSMs: dev.props.numSMs, maxSharedBytesPerBlock: dev.props.maxSharedBytesPerBlock };
  }

  /** Opens device `deviceId`, loads the kernels (compiling them with NVRTC if needed) and cuBLASLt. */
  static create(opts: CudaBackendOptions = {}): CudaBackend {
    const reason = cudaUnavailableReason();
    if (reason !== null) throw new PeregrineError('PGN_ERR_DEVICE_UNAVAILABLE', `CUDA is not available: ${reason}`, { reason });
    const dev = CudaDevice.open(opts.deviceId ?? 0);
    try {
      return new CudaBackend(dev, opts);
    } catch (e) {
      try {
        dev.release(); // the primary context goes, and with it whatever was made on it
      } catch {
        // keep the first error
      }
      throw e;
    }
  }

  /** true when libcuda loads and reports at least one device; never throws. */
  static isAvailable(): boolean {
    return cudaUnavailableReason() === null;
  }

  /** Why CUDA cannot be used here, or null. */
  static unavailableReason(): string | null {
    return cudaUnavailableReason();
  }

  get props(): DeviceProps {
    return this.dev.props;
  }

  /** Device memory free for new tensors: the driver's free memory plus what the caching allocator holds unused. */
  memoryInfo(): { freeBytes: number; totalBytes: number } {
    const { freeBytes, totalBytes } = this.dev.memInfo();
    return { freeBytes: freeBytes + this.allocator.stats().cachedBytes, totalBytes };
  }

  memoryStats(): AllocatorStats {
    return this.allocator.stats();
  }

  // ---- memory ----------------------------------------------------------------
  empty(shape: readonly number[], dtype: DType): Tensor {
    checkShape(shape, 'empty');
    return new CudaTensor(shape, dtype, this.allocator.alloc(numel(shape) * bytesPerElement(dtype)));
  }

  free(t: Tensor): void {
    const ptr = asCuda(t, 'free', 'tensor').release();
    if (ptr !== null) this.allocator.free(ptr);
  }

  view(t: Tensor, shape: readonly number[]): Tensor {
    checkShape(shape, 'view');
    const c = asCuda(t, 'view', 'tensor');
    if (numel(shape) > c.numel) throw invalid('view', `shape [${shape.join(', ')}] needs ${numel(shape)} elements, tensor [${c.shape.join(', ')}] has ${c.numel}`, { shape });
    return new CudaTensor(shape, c.dtype, c.ptr, c.base);
  }

  fromBytes(shape: readonly number[], src: StorageDType, bytes: Uint8Array, dtype: DType): Tensor {
    checkShape(shape, 'fromBytes');
    const data = convertStorage(src, bytes, dtype);
    const want = numel(shape) * bytesPerElement(dtype);
    if (data.byteLength !== want) {
      throw invalid('fromBytes', `${bytes.byteLength} bytes of ${src} hold ${data.byteLength / bytesPerElement(dtype)} elements, shape [${shape.join(', ')}] needs ${numel(shape)}`, { shape, src, byteLength: bytes.byteLength });
    }
    return this.#upload(shape, dtype, data);
  }

  fromF32(shape: readonly number[], data: Float32Array, dtype: DType = 'f32'): Tensor {
    checkShape(shape, 'fromF32');
    if (data.length !== numel(shape)) throw invalid('fromF32', `${data.length} values for shape [${shape.join(', ')}] (${numel(shape)} elements)`, { shape, length: data.length });
    return this.#upload(shape, dtype, encodeF32(data, dtype));
  }

  fromI32(shape: readonly number[], data: Int32Array): Tensor {
    checkShape(shape, 'fromI32');
    if (data.length !== numel(shape)) throw invalid('fromI32', `${data.length} values for shape [${shape.join(', ')}] (${numel(shape)} elements)`, { shape, length: data.length });
    return this.#upload(shape, 'i32', new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  }

  writeF32(dst: Tensor, data: Float32Array): void {
    const t = asCuda(dst, 'writeF32', 'dst');
    if (t.dtype === 'i32') throw invalid('writeF32', 'dst is an i32 tensor (use writeI32)');
    if (data.length > t.numel) throw invalid('writeF32', `${data.length} values do not fit tensor [${t.shape.join(', ')}]`, { length: data.length });
    this.#copyIn(t.ptr, encodeF32(data, t.dtype));
  }

  writeI32(dst: Tensor, data: Int32Array): void {
    const t = asCuda(dst, 'writeI32', 'dst');
    if (t.dtype !== 'i32') throw invalid('writeI32', `dst must be i32, got ${t.dtype}`);
    if (data.length > t.numel) throw invalid('writeI32', `${data.length} values do not fit tensor [${t.shape.join(', ')}]`, { length: data.length });
    this.#copyIn(t.ptr, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  }

  writeI32Rows(dst: Tensor, data: Int32Array, rows: number, width: number, dstStride: number): void {
    const t = asCuda(dst, 'writeI32Rows', 'dst');
    if (t.dtype !== 'i32') throw invalid('writeI32Rows', `dst must be i32, got ${t.dtype}`);
    if (width > dstStride || rows * width > data.length || rows * dstStride > t.numel) {
      throw invalid('writeI32Rows', `${rows} rows of ${width} (stride ${dstStride}) do not fit data of ${data.length} or tensor [${t.shape.join(', ')}]`, { rows, width, dstStride });
    }
    if (rows === 0 || width === 0) return;
    const copy = {
      srcXInBytes: 0, srcY: 0, srcMemoryType: CU_MEMORYTYPE_HOST, srcHost: new Uint8Array(data.buffer, data.byteOffset, rows * width * 4), srcDevice: 0, srcArray: null, srcPitch: width * 4,
      dstXInBytes: 0, dstY: 0, dstMemoryType: CU_MEMORYTYPE_DEVICE, dstHost: null, dstDevice: t.ptr, dstArray: null, dstPitch: dstStride * 4,
      WidthInBytes: width * 4, Height: rows,
    };
    check(this.dev.drv, this.dev.drv.cuMemcpy2DAsync(copy, this.stream.handle), 'cuMemcpy2DAsync');
  }

  async downloadF32(t: Tensor): Promise<Float32Array> {
    const c = asCuda(t, 'downloadF32', 'tensor');
    return decodeToF32(this.#copyOut(c), c.dtype);
  }

  async downloadI32(t: Tensor): Promise<Int32Array> {
    const c = asCuda(t, 'downloadI32', 'tensor');
    if (c.dtype !== 'i32') throw invalid('downloadI32', `tensor must be i32, got ${c.dtype}`);
    const bytes = this.#copyOut(c);
    return new Int32Array(bytes.buffer, bytes.byteOffset, c.numel);
  }

  /** Waits for all queued work (blocks this thread; run the engine off the event loop). */
  async synchronize(): Promise<void> {
    this.stream.synchronize();
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.stream.synchronize();
    disposeQuant(this);
    this.#blas.dispose();
    this.#moeScratch.release();
    this.allocator.dispose();
    this.kernels.module.unload();
    this.stream.destroy();
    this.dev.release();
  }

  // ---- CUDA graphs -----------------------------------------------------------
  /** Starts recording (not running) the ops queued from here on. No upload, download or synchronize until endCapture. */
  beginCapture(): void {
    beginCapture(this.dev.drv, this.stream);
  }

  /** Stops recording and instantiates the graph. */
  endCapture(): CudaGraph {
    return endCapture(this.dev.drv, this.stream);
  }

  /** Queues one run of `graph`; it reads the tensors it was captured with as they are now. */
  replay(graph: CudaGraph): void {
    graph.replay(this.stream);
  }

  /** Fills a float tensor with uniform random values in [-scale, scale) on the device (benchmarks, tests). */
  fillUniform(t: Tensor, seed: number, scale = 1): void {
    ops.fillUniform(this.#ctx, t, seed, scale);
  }

  /**
   * A GPU sampler for up to `maxRows` rows of f32 logits over `vocab` (kernels/sampling.cu):
   * the CPU sampler's semantics, token ids and logprobs (top-n <= maxTopN) come back instead
   * of logits. It owns a [maxRows, vocab] f32 scratch; dispose it (or this backend) to free it.
   */
  createSampler(maxRows: number, vocab: number, maxTopN = MAX_TOP_LOGPROBS): CudaSampler {
    return new CudaSampler(this, maxRows, vocab, maxTopN);
  }

  /** An event on this backend's device (timing: true by default); record it with `event.record(backend.stream)`. */
  createEvent(opts: { timing?: boolean } = {}): CudaEvent {
    return new CudaEvent(this.dev.drv, opts);
  }

  /** Page-locked host memory for downloads that do not block the host (`PinnedBuffer.copyFromAsync`); free it before this backend. */
  allocPinned(byteLength: number): PinnedBuffer {
    return new PinnedBuffer(this.dev.drv, byteLength);
  }

  // ---- ops -------------------------------------------------------------------
  embedding(out: Tensor, table: Tensor, ids: Tensor, numTokens: number): void { ops.embedding(this.#ctx, out, table, ids, numTokens); }
  embeddingShard(out: Tensor, table: Tensor, ids: Tensor, numTokens: number, vocabStart: number): void { ops.embeddingShard(this.#ctx, out, table, ids, numTokens, vocabStart); }
  rmsNorm(out: Tensor, x: Tensor, weight: Tensor, eps: number, numTokens: number, residual?: Tensor | null, weightOffset?: number): void {
    ops.rmsNorm(this.#ctx, out, x, weight, eps, numTokens, residual, weightOffset);
  }
  layerNorm(out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | null, eps: number, numTokens: number, residual?: Tensor | null): void {
    ops.layerNorm(this.#ctx, out, x, weight, bias, eps, numTokens, residual);
  }
  rmsNormFp8(out: Tensor, x: Tensor, weight: Tensor, eps: number, numTokens: number, residual: Tensor | null, weightOffset: number, xq: Fp8Activations, inputScale: Tensor | null, onlyReader?: QuantizedWeight): boolean {
    return rmsNormFp8(this, out, x, weight, eps, numTokens, residual, weightOffset, xq, inputScale, onlyReader); // cuda-quant-norm.ts
  }
  siluMulFp8(out: Tensor, gateUp: Tensor, numTokens: number, xq: Fp8Activations, inputScale: Tensor | null, onlyReader?: QuantizedWeight): boolean {
    return siluMulFp8(this, out, gateUp, numTokens, xq, inputScale, onlyReader); // cuda-quant-norm.ts
  }
  linear(out: Tensor, x: Tensor, w: Tensor | QuantizedWeight, bias: Tensor | null, numTokens: number, xq?: Fp8Activations | null): void {
    if ('qweight' in w) return quantLinear(this, out, x, w, bias, numTokens, xq ?? null); // FP8 / INT8 / INT4 (cuda-quant.ts)
    ops.linear(this.#ctx, out, x, w, bias, numTokens);
  }
  ropeWriteKv(qkv: Tensor, positions: Tensor, cosSin: Tensor | null, cache: LayerKvCache, slotMapping: Tensor, numTokens: number, p: RopeParams): void {
    ops.ropeWriteKv(this.#ctx, qkv, positions, cosSin, cache, slotMapping, numTokens, p);
  }
  attention(out: Tensor, qkv: Tensor, cache: LayerKvCache, meta: AttentionMetadata, p: AttentionParams): void {
    attention(this.#ctx, this.#attnWorkspace, out, qkv, cache, meta, p);
  }
  siluMul(out: Tensor, gateUp: Tensor, numTokens: number): void { ops.siluMul(this.#ctx, out, gateUp, numTokens); }
  fusedLinear(out: Tensor, x: Tensor, w: Tensor | QuantizedWeight, bias: Tensor | null, numTokens: number, fusion: LinearFusion): boolean {
    return ops.fusedLinear(this.#ctx, out, x, w, bias, numTokens, fusion);
  }
  geluMul(out: Tensor, gateUp: Tensor, numTokens: number, approx: GeluApprox): void { ops.geluMul(this.#ctx, out, gateUp, numTokens, approx); }
  gelu(out: Tensor, x: Tensor, numTokens: number, approx: GeluApprox): void { ops.gelu(this.#ctx, out, x, numTokens, approx); }
  relu(out: Tensor, x: Tensor, numTokens: number): void { ops.relu(this.#ctx, out, x, numTokens); }
  add(out: Tensor, a: Tensor, b: Tensor, numTokens: number): void { ops.add(this.#ctx, out, a, b, numTokens); }
  gatherRows(out: Tensor, x: Tensor, indices: Tensor, numRows: number): void { ops.gatherRows(this.#ctx, out, x, indices, numRows); }
  copy(out: Tensor, x: Tensor, numTokens: number): void { ops.copy(this.#ctx, out, x, numTokens); }
  gatherTokenIds(tokenIds: Tensor, src: Tensor, srcIndex: Tensor, numTokens: number): void { gatherTokenIds(this, tokenIds, src, srcIndex, numTokens); }
  scale(out: Tensor, x: Tensor, factor: number, numTokens: number): void { ops.scale(this.#ctx, out, x, factor, numTokens); }
  softcap(out: Tensor, x: Tensor, cap: number, numTokens: number): void { ops.softcap(this.#ctx, out, x, cap, numTokens); }
  clamp(out: Tensor, x: Tensor, min: number, max: number, numTokens: number): void { ops.clamp(this.#ctx, out, x, min, max, numTokens); }
  qkRmsNorm(qkv: Tensor, qWeight: Tensor, kWeight: Tensor, eps: number, numTokens: number, p: QkNormParams): void {
    ops.qkRmsNorm(this.#ctx, qkv, qWeight, kWeight, eps, numTokens, p);
  }
  moeRoute(topkIds: Tensor, topkWeights: Tensor, routerLogits: Tensor, numTokens: number, topK: number, renormalize: boolean): void {
    moeRoute(this.#ctx, topkIds, topkWeights, routerLogits, numTokens, topK, renormalize);
  }
  moeExperts(out: Tensor, x: Tensor, gateUp: Tensor, down: Tensor, topkIds: Tensor, topkWeights: Tensor, numTokens: number): void {
    moeExperts(this.#ctx, this.#moeScratch, out, x, gateUp, down, topkIds, topkWeights, numTokens);
  }

  // ---- host <-> device -------------------------------------------------------------
  #upload(shape: readonly number[], dtype: DType, bytes: Uint8Array): CudaTensor {
    const t = new CudaTensor(shape, dtype, this.allocator.alloc(bytes.byteLength));
    this.#copyIn(t.ptr, bytes);
    return t;
  }

  /** Pageable host memory: the call returns once `bytes` was staged, so the caller may reuse it. */
  #copyIn(dst: number, bytes: Uint8Array): void {
    if (bytes.byteLength === 0) return;
    check(this.dev.drv, this.dev.drv.cuMemcpyHtoDAsync(dst, bytes, bytes.byteLength, this.stream.handle), 'cuMemcpyHtoDAsync');
  }

  #copyOut(t: CudaTensor): Uint8Array {
    const bytes = new Uint8Array(t.sizeBytes);
    if (t.sizeBytes === 0) return bytes;
    check(this.dev.drv, this.dev.drv.cuMemcpyDtoHAsync(bytes, t.ptr, t.sizeBytes, this.stream.handle), 'cuMemcpyDtoHAsync');
    this.stream.synchronize();
    return bytes;
  }
}

function checkShape(shape: readonly number[], op: string): void {
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw invalid(op, `invalid shape [${shape.join(', ')}]`, { shape });
  }
}
