/**
 * What one sampling step uploads (kernels/sampling.cu, penalties.cuh): one 112-byte record per
 * row, then the token-history entries of the rows that need them, in the same buffer:
 *
 * ```
 * [record 0] ... [record n-1] [entries of row a] [entries of row b] ...
 * entries of a row: numMasked (id, 0) pairs   eos + stop ids while outputs < min_tokens
 *                   numPenalized (id, count)  distinct prompt + output ids when repetition_penalty
 *                                             != 1, else distinct output ids; count = occurrences
 *                                             in the output (0: prompt only)
 * ```
 * Rows without penalties or a pending min_tokens mask have no entries and pay nothing on the device.
 * Async scheduling: a row whose last output token is still being sampled by the step in flight
 * (`pendingAt`: where the kernel reads it) counts it for min_tokens here and for penalties there.
 */
import { PeregrineError } from '../../errors.js';
import { hasPenalties } from '../../sampling/logits-processors.js';
import { isGreedy } from '../../sampling/params.js';
import { Rng } from '../../sampling/rng.js';
import type { SequenceSamplingState } from '../../sampling/sampler.js';
import { historyPairs, isTokenWord } from './history-entries.js';

/** bytes of one row's SampleParams record */
export const SAMPLE_PARAM_BYTES = 112;
/** bytes of one history entry: (token id, output count) as two i32 */
export const HISTORY_ENTRY_BYTES = 8;
const GREEDY = 1;

/** One row to sample: its row in the logits tensor and its sequence's sampling state. */
export interface DeviceSampleRow {
  readonly logitsRow: number;
  readonly state: SequenceSamplingState;
  /**
   * Async scheduling: the row's newest output token is not in `state.outputTokenIds` yet (the step
   * in flight samples it); the kernel reads it from its pending-ids tensor at this index.
   */
  readonly pendingAt?: number;
}

/** Output tokens of the row, the pending one included. */
function numOutputTokens(row: DeviceSampleRow): number {
  return row.state.outputTokenIds.length + (row.pendingAt === undefined ? 0 : 1);
}

export { readsTokenHistory } from '../../sampling/logits-processors.js';

/** eos and stop ids (the CPU's maskTokens lists) while the output is shorter than min_tokens */
function maskedIds(row: DeviceSampleRow): number[] {
  const { state } = row;
  if (numOutputTokens(row) >= state.params.minTokens) return [];
  return [...(state.eosTokenIds ?? []), ...state.params.stopTokenIds].filter(isTokenWord);
}

/** Bytes `packSampleParams` writes for `rows`: the records and every history entry. */
export function sampleParamsBytes(rows: readonly DeviceSampleRow[]): number {
  let numEntries = 0;
  for (const row of rows) numEntries += maskedIds(row).length + (hasPenalties(row.state.params) ? historyPairs(row.state).length / 2 : 0);
  return rows.length * SAMPLE_PARAM_BYTES + numEntries * HISTORY_ENTRY_BYTES;
}

/**
 * Writes the records of `rows` and their history entries into `view` (layout above; view's
 * offset 0 is the device buffer's; its byteOffset a multiple of 4), and moves each non-greedy
 * row's Rng past the one word the kernel draws (greedy rows draw none, as on the CPU).
 * Returns the bytes written.
 * @throws PeregrineError `PGN_ERR_INTERNAL` when `view` is shorter than `sampleParamsBytes(rows)`
 */
export function packSampleParams(rows: readonly DeviceSampleRow[], view: DataView): number {
  const numBytes = sampleParamsBytes(rows);
  if (view.byteLength < numBytes) {
    throw new PeregrineError('PGN_ERR_INTERNAL', `packSampleParams: ${rows.length} rows need ${numBytes} bytes, the view has ${view.byteLength}`, { numBytes, byteLength: view.byteLength });
  }
  let at = rows.length * SAMPLE_PARAM_BYTES;
  rows.forEach((row, r) => {
    const { logitsRow, state } = row;
    const o = r * SAMPLE_PARAM_BYTES;
    writeRecord(view, o, logitsRow, state);
    const entryStart = at;
    const numMasked = writeMasked(view, at, row);
    at += numMasked * HISTORY_ENTRY_BYTES;
    const numPenalized = writePenalized(view, at, state);
    at += numPenalized * HISTORY_ENTRY_BYTES;
    view.setInt32(o + 68, numMasked, true);
    view.setInt32(o + 96, entryStart / 4, true);
    view.setInt32(o + 100, numPenalized, true);
    view.setInt32(o + 104, row.pendingAt !== undefined && hasPenalties(state.params) ? row.pendingAt : -1, true);
    view.setInt32(o + 108, 0, true);
  });
  return at;
}

function writeRecord(view: DataView, o: number, logitsRow: number, state: SequenceSamplingState): void {
  const p = state.params;
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
  view.setFloat64(o + 72, p.repetitionPenalty, true);
  view.setFloat64(o + 80, p.presencePenalty, true);
  view.setFloat64(o + 88, p.frequencyPenalty, true);
}

function writeMasked(view: DataView, at: number, row: DeviceSampleRow): number {
  const ids = maskedIds(row);
  ids.forEach((id, j) => {
    view.setInt32(at + j * HISTORY_ENTRY_BYTES, id, true);
    view.setInt32(at + j * HISTORY_ENTRY_BYTES + 4, 0, true);
  });
  return ids.length;
}

/** (id, output count) of each distinct id the penalties touch; i32 words as the host's (little-endian, as the GPU) */
function writePenalized(view: DataView, at: number, state: SequenceSamplingState): number {
  if (!hasPenalties(state.params)) return 0;
  const pairs = historyPairs(state);
  new Int32Array(view.buffer, view.byteOffset + at, pairs.length).set(pairs);
  return pairs.length / 2;
}
