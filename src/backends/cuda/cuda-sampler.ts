/**
 * Sampling on the GPU (kernels/sampling.cu): a step uploads one parameter record per row,
 * launches one kernel (a thread block per row) and downloads only token ids and logprobs,
 * instead of [rows, vocab] f32 logits. Results equal the CPU sampler's (`sampleRow`) on the
 * same logits and Rng state: the kernel follows its every rounding step, and each row's
 * draw is the next word of the sequence's Philox stream, which the host then skips.
 *
 * Rows that need penalties or min_tokens masking read the token history: they stay on the
 * host (`canSample` is false; `downloadRows` fetches just those rows).
 *
 * ```ts
 * const sampler = backend.createSampler(256, vocab);
 * const results = await sampler.sample(logits, rows.map((state, i) => ({ logitsRow: i, state })));
 * ```
 */
import { PeregrineError } from '../../errors.js';
import type { Tensor } from '../backend.js';
import { hasPenalties } from '../../sampling/logits-processors.js';
import { isGreedy } from '../../sampling/params.js';
import { Rng } from '../../sampling/rng.js';
import type { SampleResult, SequenceSamplingState, TokenLogprob } from '../../sampling/sampler.js';
import type { CudaBackend } from './cuda-backend.js';
import { asCuda } from './cuda-tensor.js';
import type { Kernel, ParamKind } from './module.js';
import { invalid } from './op-checks.js';

/** most top-n alternatives the kernel returns (SAMPLE_MAX_TOP_N; OpenAI's limit too) */
export const MAX_TOP_LOGPROBS = 20;
/** bytes of one row's SampleParams record */
export const SAMPLE_PARAM_BYTES = 72;
const THREADS = 512;
const GREEDY = 1;
const KERNEL_PARAMS: readonly ParamKind[] = ['ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32'];

/** One row to sample: its row in the logits tensor and its sequence's sampling state. */
export interface DeviceSampleRow {
  readonly logitsRow: number;
  readonly state: SequenceSamplingState;
}

/** i32 words per row of the kernel's output: token, logprob, then (id, logprob) pairs. */
export function outputStride(maxTopN: number): number {
  return 2 + 2 * maxTopN;
}

/** Whether the kernel can sample this row: no penalties, no min_tokens masking, top-n within maxTopN. */
export function canSampleOnDevice(state: SequenceSamplingState, maxTopN = MAX_TOP_LOGPROBS): boolean {
  const p = state.params;
  if (hasPenalties(p)) return false;
  if (state.outputTokenIds.length < p.minTokens) return false;
  return p.logprobs === null || p.logprobs <= maxTopN;
}

/**
 * Writes the SampleParams records of `rows` into `view` (72 bytes each, layout of sampling.cu)
 * and moves each non-greedy row's Rng past the one word the kernel draws (greedy rows draw none,
 * as on the CPU).
 */
export function packSampleParams(rows: readonly DeviceSampleRow[], view: DataView): void {
  rows.forEach(({ logitsRow, state }, r) => {
    const p = state.params;
    const o = r * SAMPLE_PARAM_BYTES;
    const greedy = isGreedy(p);
    view.setFloat64(o, p.temperature, true);
    view.setFloat64(o + 8, p.topP, true);
    view.setFloat64(o + 16, p.minP, true);
    view.setInt32(o + 24, p.topK, true);
    view.setInt32(o + 28, p.logprobs ?? -1, true);
    view.setInt32(o + 32, logitsRow, true);
    view.setInt32(o + 36, greedy ? GREEDY : 0, true);
    let key0 = 0, key1 = 0, word = 0;
    let counter: ArrayLike<number> = [0, 0, 0, 0];
    if (!greedy) {
      state.rng ??= Rng.fromEntropy();
      ({ key0, key1, counter, word } = state.rng.position());
      state.rng.skip(1);
    }
    view.setUint32(o + 40, key0, true);
    view.setUint32(o + 44, key1, true);
    for (let i = 0; i < 4; i++) view.setUint32(o + 48 + 4 * i, counter[i]!, true);
    view.setUint32(o + 64, word, true);
    view.setUint32(o + 68, 0, true);
  });
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
  readonly #params: Tensor;
  readonly #out: Tensor;
  /** f32 [maxRows, vocab]: the kernel's working rows; also the landing place of downloadRows */
  readonly #scratch: Tensor;
  readonly #rowIndices: Tensor;
  readonly #paramBytes: ArrayBuffer;
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
      if (!this.canSample(state)) throw invalid('sample', 'a row needs penalties, min_tokens masking or more than maxTopN logprobs: sample it on the host', { logprobs: state.params.logprobs });
    }
    const n = rows.length;
    const b = this.#backend;
    const view = new DataView(this.#paramBytes, 0, n * SAMPLE_PARAM_BYTES);
    packSampleParams(rows, view);
    b.writeI32(this.#params, new Int32Array(this.#paramBytes, 0, (n * SAMPLE_PARAM_BYTES) / 4));
    const stride = outputStride(this.maxTopN);
    const out = asCuda(this.#out, 'sample', 'out');
    this.#kernel.launch(n, THREADS, 0, b.stream, [out.ptr, asCuda(this.#scratch, 'sample', 'scratch').ptr, x.ptr, asCuda(this.#params, 'sample', 'params').ptr, this.vocab, stride]);
    const words = await b.downloadI32(b.view(this.#out, [n * stride]));
    return unpackSampleResults(rows, words, stride, this.vocab);
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

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const t of [this.#params, this.#out, this.#rowIndices, this.#scratch]) this.#backend.free(t);
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
