/**
 * Sampling on the GPU (kernels/sampling.cu): a step uploads one parameter record per row,
 * launches one kernel (a thread block per row) and downloads only token ids and logprobs,
 * instead of [rows, vocab] f32 logits. Results equal the CPU sampler's (`sampleRow`) on the
 * same logits and Rng state: the kernel follows its every rounding step, and each row's
 * draw is the next word of the sequence's Philox stream, which the host then skips.
 *
 * Rows with penalties or a min_tokens mask also upload their token history (sample-params.ts):
 * the kernel applies it to a copy of the row first (penalties.cuh). Only rows asking for more
 * than maxTopN logprobs stay on the host (`canSample` false; `downloadRows` fetches just those).
 *
 * ```ts
 * const sampler = backend.createSampler(256, vocab);
 * const results = await sampler.sample(logits, rows.map((state, i) => ({ logitsRow: i, state })));
 * ```
 */
import { PeregrineError } from '../../errors.js';
import type { Tensor } from '../backend.js';
import type { SampleResult, SequenceSamplingState, TokenLogprob } from '../../sampling/sampler.js';
import type { CudaBackend } from './cuda-backend.js';
import { asCuda } from './cuda-tensor.js';
import type { Kernel, ParamKind } from './module.js';
import { invalid } from './op-checks.js';
import { packSampleParams, SAMPLE_PARAM_BYTES, sampleParamsBytes, type DeviceSampleRow } from './sample-params.js';

export { HISTORY_ENTRY_BYTES, packSampleParams, readsTokenHistory, SAMPLE_PARAM_BYTES, sampleParamsBytes } from './sample-params.js';
export type { DeviceSampleRow } from './sample-params.js';

/** most top-n alternatives the kernel returns (SAMPLE_MAX_TOP_N; OpenAI's limit too) */
export const MAX_TOP_LOGPROBS = 20;
const THREADS = 512;
const KERNEL_PARAMS: readonly ParamKind[] = ['ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'ptr'];

/** i32 words per row of the kernel's output: token, logprob, then (id, logprob) pairs. */
export function outputStride(maxTopN: number): number {
  return 2 + 2 * maxTopN;
}

/** Whether the kernel can sample this row: top-n within maxTopN (penalties and min_tokens run on the device too). */
export function canSampleOnDevice(state: SequenceSamplingState, maxTopN = MAX_TOP_LOGPROBS): boolean {
  const n = state.params.logprobs;
  return n === null || n <= maxTopN;
}

/** The SampleResults of `rows` from the kernel's output words. */
export function unpackSampleResults(rows: readonly DeviceSampleRow[], out: Int32Array, stride: number, vocab: number): SampleResult[] {
  const f32 = new Float32Array(out.buffer, out.byteOffset, out.length);
  return rows.map(({ state }, r) => {
    const o = r * stride;
    const tokenId = out[o]!;
    if (tokenId < 0 || tokenId >= vocab) {
      throw new PeregrineError('PGN_ERR_INTERNAL', `cannot sample: every logit in the row of ${vocab} is -inf or NaN`, { vocab });
    }
    const n = state.params.logprobs;
    if (n === null) return { tokenId, logprob: Number.NaN, topLogprobs: null };
    const topLogprobs: TokenLogprob[] = [];
    for (let j = 0; j < Math.min(n, vocab); j++) topLogprobs.push({ tokenId: out[o + 2 + 2 * j]!, logprob: f32[o + 3 + 2 * j]! });
    return { tokenId, logprob: f32[o + 1]!, topLogprobs };
  });
}

export class CudaSampler {
  readonly maxRows: number;
  readonly vocab: number;
  readonly maxTopN: number;
  readonly #backend: CudaBackend;
  readonly #kernel: Kernel;
  /** i32: the step's records and history entries (sample-params.ts); grown as needed */
  #params: Tensor;
  readonly #out: Tensor;
  /** f32 [maxRows, vocab]: the kernel's working rows; also the landing place of downloadRows */
  readonly #scratch: Tensor;
  readonly #rowIndices: Tensor;
  #paramBytes: ArrayBuffer;
  #disposed = false;

  /** Use `CudaBackend.createSampler`. */
  constructor(backend: CudaBackend, maxRows: number, vocab: number, maxTopN = MAX_TOP_LOGPROBS) {
    for (const [name, v, lo, hi] of [['maxRows', maxRows, 1, 65535], ['vocab', vocab, 1, 2 ** 31 / 4], ['maxTopN', maxTopN, 0, MAX_TOP_LOGPROBS]] as const) {
      if (!Number.isInteger(v) || v < lo || v > hi) throw invalid('createSampler', `${name} must be an integer in [${lo}, ${hi}], got ${v}`, { [name]: v });
    }
    this.#backend = backend;
    this.maxRows = maxRows;
    this.vocab = vocab;
    this.maxTopN = maxTopN;
    this.#kernel = backend.kernels.module.kernel('sample_rows', KERNEL_PARAMS);
    this.#paramBytes = new ArrayBuffer(maxRows * SAMPLE_PARAM_BYTES);
    this.#params = backend.empty([maxRows * SAMPLE_PARAM_BYTES / 4], 'i32');
    this.#out = backend.empty([maxRows * outputStride(maxTopN)], 'i32');
    this.#rowIndices = backend.empty([maxRows], 'i32');
    this.#scratch = backend.empty([maxRows, vocab], 'f32');
  }

  /** Whether `state` can be sampled here (else sample it on the host from `downloadRows`). */
  canSample(state: SequenceSamplingState): boolean {
    return canSampleOnDevice(state, this.maxTopN);
  }

  /**
   * Samples each row from its row of `logits` (f32 [*, vocab], left unchanged): one parameter
   * upload, one launch, one download. Advances each non-greedy row's Rng by one draw.
   * @throws PeregrineError `PGN_ERR_INTERNAL` when a row has no finite logit
   */
  async sample(logits: Tensor, rows: readonly DeviceSampleRow[]): Promise<SampleResult[]> {
    if (rows.length === 0) return [];
    const x = this.#checkLogits(logits, 'sample', rows.map((r) => r.logitsRow));
    for (const { state } of rows) {
      if (!this.canSample(state)) throw invalid('sample', `a row asks for ${state.params.logprobs} logprobs, more than maxTopN ${this.maxTopN}: sample it on the host`, { logprobs: state.params.logprobs, maxTopN: this.maxTopN });
    }
    const n = rows.length;
    const b = this.#backend;
    const pending = this.#pendingPtr(rows, null, 'sample');
    this.#uploadParams(rows);
    const stride = outputStride(this.maxTopN);
    const out = asCuda(this.#out, 'sample', 'out');
    this.#kernel.launch(n, THREADS, 0, b.stream, [out.ptr, asCuda(this.#scratch, 'sample', 'scratch').ptr, x.ptr, asCuda(this.#params, 'sample', 'params').ptr, this.vocab, stride, pending]);
    const words = await b.downloadI32(b.view(this.#out, [n * stride]));
    return unpackSampleResults(rows, words, stride, this.vocab);
  }

  /** Packs the records and history entries of `rows` and uploads them in one copy, growing the buffers when they do not fit. */
  #uploadParams(rows: readonly DeviceSampleRow[]): void {
    const numBytes = sampleParamsBytes(rows);
    if (numBytes > this.#paramBytes.byteLength) {
      const capacity = Math.max(numBytes, 2 * this.#paramBytes.byteLength);
      const grown = this.#backend.empty([capacity / 4], 'i32');
      this.#backend.free(this.#params);
      this.#params = grown;
      this.#paramBytes = new ArrayBuffer(capacity);
    }
    packSampleParams(rows, new DataView(this.#paramBytes, 0, numBytes));
    this.#backend.writeI32(this.#params, new Int32Array(this.#paramBytes, 0, numBytes / 4));
  }

  /** The f32 logits of `rowIndices` (rows of `logits`), gathered on the device and downloaded in one copy: [rowIndices.length * vocab]. */
  async downloadRows(logits: Tensor, rowIndices: readonly number[]): Promise<Float32Array> {
    if (rowIndices.length === 0) return new Float32Array(0);
    this.#checkLogits(logits, 'downloadRows', rowIndices);
    const b = this.#backend;
    const n = rowIndices.length;
    b.writeI32(this.#rowIndices, Int32Array.from(rowIndices));
    const dst = b.view(this.#scratch, [n, this.vocab]);
    b.gatherRows(dst, logits, this.#rowIndices, n);
    return b.downloadF32(dst);
  }

  // ---- async scheduling: launch now, read the outputs later -------------------------------------
  /** i32 words per row of the output tensor `launch` returns */
  get rowStride(): number {
    return outputStride(this.maxTopN);
  }

  /**
   * `sample` without the download: queues the parameter upload and the kernel, and returns the
   * output words, i32 [rows.length * rowStride] (unpackSampleResults reads them), valid once the
   * stream has run them and until the next launch or sample. Advances each non-greedy row's Rng.
   * `pendingIds` (i32): where rows with `pendingAt` read their in-flight output token.
   */
  launch(logits: Tensor, rows: readonly DeviceSampleRow[], pendingIds: Tensor | null = null): Tensor {
    const x = this.#checkLogits(logits, 'launch', rows.map((r) => r.logitsRow));
    for (const { state } of rows) {
      if (!this.canSample(state)) throw invalid('launch', `a row asks for ${state.params.logprobs} logprobs, more than maxTopN ${this.maxTopN}: sample it on the host`, { logprobs: state.params.logprobs, maxTopN: this.maxTopN });
    }
    const n = rows.length;
    const b = this.#backend;
    const stride = this.rowStride;
    if (n > 0) {
      const pending = this.#pendingPtr(rows, pendingIds, 'launch');
      this.#uploadParams(rows);
      const out = asCuda(this.#out, 'launch', 'out');
      this.#kernel.launch(n, THREADS, 0, b.stream, [out.ptr, asCuda(this.#scratch, 'launch', 'scratch').ptr, x.ptr, asCuda(this.#params, 'launch', 'params').ptr, this.vocab, stride, pending]);
    }
    return b.view(this.#out, [Math.max(1, n) * stride]);
  }

  /** The SampleResults of `rows` from the words a `launch` of them produced (downloaded). */
  unpack(rows: readonly DeviceSampleRow[], words: Int32Array): SampleResult[] {
    return unpackSampleResults(rows, words, this.rowStride, this.vocab);
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const t of [this.#params, this.#out, this.#rowIndices, this.#scratch]) this.#backend.free(t);
  }

  /** The pending-ids pointer (0 when no row has a pending token); every pendingAt must lie inside it. */
  #pendingPtr(rows: readonly DeviceSampleRow[], pendingIds: Tensor | null, op: string): number {
    const pending = rows.filter((r) => r.pendingAt !== undefined).map((r) => r.pendingAt!);
    if (pending.length === 0) return 0;
    if (!pendingIds) throw invalid(op, 'rows with a pending token need the pending-ids tensor', { numPending: pending.length });
    const ids = asCuda(pendingIds, op, 'pendingIds');
    if (ids.dtype !== 'i32') throw invalid(op, `pendingIds must be i32, got ${ids.dtype}`);
    const bad = pending.find((i) => !Number.isInteger(i) || i < 0 || i >= ids.numel);
    if (bad !== undefined) throw invalid(op, `pendingAt ${bad} is outside the pending ids [0, ${ids.numel})`, { pendingAt: bad, numel: ids.numel });
    return ids.ptr;
  }

  #checkLogits(logits: Tensor, op: string, rowIndices: readonly number[]) {
    if (this.#disposed) throw new PeregrineError('PGN_ERR_INTERNAL', `${op}: the sampler was disposed`);
    const x = asCuda(logits, op, 'logits');
    if (x.dtype !== 'f32') throw invalid(op, `logits must be f32, got ${x.dtype}`, { dtype: x.dtype });
    const width = x.shape[x.shape.length - 1];
    if (width !== this.vocab) throw invalid(op, `logits rows have ${width} entries, the sampler was made for a vocab of ${this.vocab}`, { shape: x.shape, vocab: this.vocab });
    if (rowIndices.length > this.maxRows) throw invalid(op, `${rowIndices.length} rows exceed the sampler's maxRows ${this.maxRows}`, { numRows: rowIndices.length, maxRows: this.maxRows });
    const numRows = x.numel / this.vocab;
    for (const r of rowIndices) {
      if (!Number.isInteger(r) || r < 0 || r >= numRows) throw invalid(op, `logits row ${r} is outside [0, ${numRows})`, { row: r, numRows });
    }
    return x;
  }
}
