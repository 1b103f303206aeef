/**
 * Sampling on the device for the runner: the sampler a backend offers (CudaBackend.createSampler),
 * the split of a step's rows between it and the host, and logits-row downloads in sampler-sized
 * copies. Token ids and logprobs come back instead of logits.
 */
import type { Backend, Tensor } from '../backends/backend.js';
import { isGreedy, sampleRow, type SampleResult, type SequenceSamplingState } from '../sampling/index.js';
import { Rng } from '../sampling/rng.js';
import type { RunnerEntry } from './model-runner.js';

/** A backend that samples on the device (CudaBackend.createSampler): token ids come back instead of logits. */
export interface DeviceSampler {
  canSample(state: SequenceSamplingState): boolean;
  sample(logits: Tensor, rows: readonly { logitsRow: number; state: SequenceSamplingState }[]): Promise<SampleResult[]>;
  downloadRows(logits: Tensor, rowIndices: readonly number[]): Promise<Float32Array>;
  /**
   * `sample` without the download: i32 output words, `rowStride` per row. A row with `pendingAt` has one
   * more output token than its state holds (sampled by the step in flight): `pendingIds[pendingAt]`.
   */
  launch(logits: Tensor, rows: readonly { logitsRow: number; state: SequenceSamplingState; pendingAt?: number }[], pendingIds?: Tensor | null): Tensor;
  readonly rowStride: number;
  unpack(rows: readonly { logitsRow: number; state: SequenceSamplingState }[], words: Int32Array): SampleResult[];
  dispose(): void;
}
interface SamplingBackend extends Backend {
  createSampler(maxRows: number, vocab: number): DeviceSampler;
}
/** The backend's device sampler for up to `maxRows` rows of `vocab`, or null (none, or PEREGRINE_GPU_SAMPLING=0). */
export function createDeviceSampler(backend: Backend, maxRows: number, vocab: number): DeviceSampler | null {
  const b = backend as Partial<SamplingBackend>;
  const on = process.env.PEREGRINE_GPU_SAMPLING !== '0' && typeof b.createSampler === 'function';
  return on ? b.createSampler!(maxRows, vocab) : null;
}

/** Logits rows [first, first + n) of `vocab` to the host, at most `maxRows` rows per copy. */
export async function downloadRowRange(sampler: DeviceSampler, logits: Tensor, first: number, n: number, vocab: number, maxRows: number): Promise<Float32Array> {
  const out = new Float32Array(n * vocab);
  for (let r = 0; r < n; r += maxRows) {
    const rows = Array.from({ length: Math.min(maxRows, n - r) }, (_, k) => first + r + k);
    out.set(await sampler.downloadRows(logits, rows), r * vocab);
  }
  return out;
}

/**
 * Samples every sampling entry from `logits` (one row each, in entry order) on the device
 * (penalties and min_tokens included); rows the sampler cannot take (more top logprobs than its
 * cap) are downloaded and sampled on the host with `scratch` ([vocab] f32).
 */
export async function sampleOnDevice(
  sampler: DeviceSampler, logits: Tensor, entries: readonly RunnerEntry[], samples: readonly boolean[], vocab: number, scratch: Float32Array,
): Promise<Array<SampleResult | null>> {
  const results: Array<SampleResult | null> = entries.map(() => null);
  const deviceRows: { logitsRow: number; state: SequenceSamplingState }[] = [], deviceAt: number[] = [];
  const hostRows: number[] = [], hostAt: number[] = [];
  let row = 0;
  entries.forEach((e, i) => {
    if (!samples[i]) return;
    const state = e.seq.samplingState;
    if (sampler.canSample(state)) {
      deviceRows.push({ logitsRow: row, state });
      deviceAt.push(i);
    } else {
      hostRows.push(row);
      hostAt.push(i);
    }
    row++;
  });
  if (hostRows.length > 0) {
    const host = await sampler.downloadRows(logits, hostRows);
    hostAt.forEach((at, k) => (results[at] = sampleRow(host.subarray(k * vocab, (k + 1) * vocab), entries[at]!.seq.samplingState, scratch)));
  }
  const sampled = await sampler.sample(logits, deviceRows);
  deviceAt.forEach((at, k) => (results[at] = sampled[k]!));
  return results;
}

/**
 * Async scheduling, host sampling: the state as it will be once its in-flight output token `tokenId`
 * lands (the engine appends it when it collects the step in flight), for min_tokens and penalties.
 * The Rng is the state's own object, so a draw here advances the sequence's stream.
 */
export function withPendingToken(state: SequenceSamplingState, tokenId: number): SequenceSamplingState {
  if (!isGreedy(state.params)) state.rng ??= Rng.fromEntropy();
  return { params: state.params, promptTokenIds: state.promptTokenIds, outputTokenIds: [...Array.from(state.outputTokenIds), tokenId], rng: state.rng, eosTokenIds: state.eosTokenIds };
}
