/**
 * Sampling a launched step (async scheduling) and reading its results once the device has run it.
 * On a device sampler with pinned memory, the ids land in `sampledIds` on the device (what the next
 * step's placeholders read) and in a pinned slot for the host; elsewhere the step's logits come to
 * the host at launch and are sampled there. A row whose newest output token is still in flight
 * (`pendingAt`) counts it: the kernel reads it from the step's input ids, the host from the last
 * launch's samples (the row `prevSampledRows` names for that input token).
 */
import type { Backend, Tensor } from '../backends/backend.js';
import { sampleRow, type SampleResult, type SequenceSamplingState } from '../sampling/index.js';
import { readsTokenHistory } from '../sampling/logits-processors.js';
import { withPendingToken, type DeviceSampler } from './device-sampling.js';
import { hasPinnedMemory, idsToResults, ResultSlots } from './result-slots.js';

/** One sampling row of a launched step. */
export interface LaunchRow {
  readonly logitsRow: number;
  readonly state: SequenceSamplingState;
  /** where the row's in-flight output token sits in the step's input ids */
  readonly pendingAt?: number;
}

export class LaunchedSampling {
  /** i32 [maxNumSeqs] = r * the device sampler's rowStride: where each row's id sits in its output words */
  private strideIndex: Tensor | null = null;
  /** pinned landing places of launched steps' results (CUDA), made at the first launch */
  private resultSlots: ResultSlots | null = null;
  /** the last launch's token ids where it sampled on the host */
  private lastHostSamples: Int32Array | null = null;

  /**
   * @param sampledIds i32 [maxNumSeqs]: receives each launch's ids in row order
   * @param scratch f32 [vocab] for host sampling
   */
  constructor(
    private readonly backend: Backend,
    private readonly maxNumSeqs: number,
    private readonly vocab: number,
    private readonly sampledIds: Tensor,
    private readonly scratch: Float32Array,
  ) {}

  /**
   * Queues (device) or runs (host) the sampling of `rows` from `logits` (null: no rows) and returns the
   * reader of their results, valid once the device has run the step.
   * @param prevSampledRows the step's placeholders: for input token t, its row of the last launch (or -1)
   * @param inputIds the step's input token ids (the in-flight tokens, after the placeholder gather)
   */
  async sample(sampler: DeviceSampler | null, logits: Tensor | null, rows: readonly LaunchRow[], prevSampledRows: Int32Array | undefined, inputIds: Tensor): Promise<() => SampleResult[]> {
    if (sampler && logits && hasPinnedMemory(this.backend)) {
      const words = sampler.launch(logits, rows, inputIds);
      const stride = sampler.rowStride;
      this.strideIndex ??= this.backend.fromI32([this.maxNumSeqs], Int32Array.from({ length: this.maxNumSeqs }, (_, r) => r * stride));
      this.backend.gatherTokenIds(this.sampledIds, words, this.strideIndex, rows.length);
      // logprobs need the whole output rows; otherwise the compact ids are enough
      const full = rows.some((r) => r.state.params.logprobs !== null);
      const numWords = rows.length * (full ? stride : 1);
      this.resultSlots ??= new ResultSlots(this.backend, this.maxNumSeqs * stride);
      const slots = this.resultSlots;
      const slot = slots.download(full ? words : this.sampledIds, numWords);
      return () => (full ? sampler.unpack(rows, slots.read(slot, numWords)) : idsToResults(slots.read(slot, numWords), this.vocab));
    }
    const V = this.vocab;
    const host = logits ? await this.backend.downloadF32(logits) : new Float32Array(0);
    const last = this.lastHostSamples;
    const sampled = rows.map((r, k) => {
      const state = r.pendingAt !== undefined && readsTokenHistory(r.state) ? withPendingToken(r.state, last![prevSampledRows![r.pendingAt]!]!) : r.state;
      return sampleRow(host.subarray(k * V, (k + 1) * V), state, this.scratch);
    });
    this.lastHostSamples = Int32Array.from(sampled, (r) => r.tokenId);
    this.backend.writeI32(this.sampledIds, this.lastHostSamples);
    return () => sampled;
  }

  dispose(): void {
    this.resultSlots?.dispose();
    this.resultSlots = null;
    if (this.strideIndex) this.backend.free(this.strideIndex);
    this.strideIndex = null;
  }
}
