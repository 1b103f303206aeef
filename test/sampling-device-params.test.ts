/**
 * The device sampler's upload (sample-params.ts), without a GPU: the record layout of the
 * history fields, the entries of min_tokens masks and penalties, and (through a JS replay of
 * kernels/penalties.cuh on the packed bytes) that those entries turn a logits row into exactly
 * what the CPU processors (maskTokens, applyPenalties) make of it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { canSampleOnDevice, HISTORY_ENTRY_BYTES, packSampleParams, readsTokenHistory, SAMPLE_PARAM_BYTES, sampleParamsBytes, type DeviceSampleRow } from '../src/backends/cuda/cuda-sampler.js';
import { isPeregrineError } from '../src/errors.js';
import { createSamplingState, makeSamplingParams, type SamplingParamsInit, type SequenceSamplingState } from '../src/sampling/index.js';
import { applyPenalties, maskTokens } from '../src/sampling/logits-processors.js';

interface RowFields {
  numMasked: number;
  entryStart: number;
  numPenalized: number;
  repetition: number;
  presence: number;
  frequency: number;
  masked: number[];
  penalized: [number, number][];
}

function readRow(view: DataView, r: number): RowFields {
  const o = r * SAMPLE_PARAM_BYTES;
  const numMasked = view.getInt32(o + 68, true), entryStart = view.getInt32(o + 96, true), numPenalized = view.getInt32(o + 100, true);
  const word = (k: number) => view.getInt32(4 * (entryStart + k), true);
  return {
    numMasked, entryStart, numPenalized,
    repetition: view.getFloat64(o + 72, true), presence: view.getFloat64(o + 80, true), frequency: view.getFloat64(o + 88, true),
    masked: Array.from({ length: numMasked }, (_, j) => word(2 * j)),
    penalized: Array.from({ length: numPenalized }, (_, j) => [word(2 * (numMasked + j)), word(2 * (numMasked + j) + 1)] as [number, number]),
  };
}

/** penalties.cuh's apply_history, step for step (f64 ops rounded once to f32); pendingId: the in-flight token, or -1 */
function replayKernel(row: Float32Array, f: RowFields, pendingId = -1): void {
  for (const id of f.masked) if (id >= 0 && id < row.length) row[id] = -Infinity;
  const rep = f.repetition !== 1, presFreq = f.presence !== 0 || f.frequency !== 0;
  const penalize = (id: number, count: number) => {
    let v = row[id]!;
    if (rep) v = Math.fround(v > 0 ? v / f.repetition : v * f.repetition);
    if (presFreq && count > 0) v = Math.fround(v - (f.frequency * count + f.presence));
    row[id] = v;
  };
  let seen = false;
  for (const [id, count] of f.penalized) {
    if (id < 0 || id >= row.length) continue;
    if (id === pendingId) seen = true;
    penalize(id, id === pendingId ? count + 1 : count);
  }
  if (!seen && pendingId >= 0 && pendingId < row.length) penalize(pendingId, 1);
}

function state(init: SamplingParamsInit, prompt: number[], output: number[], eos: number[] = []): SequenceSamplingState {
  return createSamplingState(makeSamplingParams({ seed: 1, maxTokens: 64, ...init }), prompt, output, 0, eos);
}

function pack(rows: DeviceSampleRow[]): DataView {
  const view = new DataView(new ArrayBuffer(sampleParamsBytes(rows)));
  assert.equal(packSampleParams(rows, view), view.byteLength, 'bytes written = sampleParamsBytes');
  return view;
}

test('rows without history have no entries; penalized and min_tokens rows list theirs after the records', () => {
  const plain = state({ temperature: 0.7 }, [1, 2], [3]);
  const rep = state({ repetitionPenalty: 1.3, presencePenalty: 0.5 }, [5, 5, 7], [7, 9, 9]);
  const presOnly = state({ frequencyPenalty: 0.25 }, [5, 5, 7], [7, 9, 9, 4]);
  const minTok = state({ minTokens: 3, stopTokenIds: [3, 2] }, [1], [8], [2]);
  const rows = [plain, rep, presOnly, minTok].map((s, i) => ({ logitsRow: i, state: s }));
  assert.equal(sampleParamsBytes(rows), 4 * SAMPLE_PARAM_BYTES + (3 + 3 + 3) * HISTORY_ENTRY_BYTES);
  const view = pack(rows);
  const [a, b, c, d] = [0, 1, 2, 3].map((r) => readRow(view, r));
  assert.deepEqual([a!.numMasked, a!.numPenalized], [0, 0], 'a plain row pays nothing');
  assert.equal(b!.entryStart, (4 * SAMPLE_PARAM_BYTES) / 4, 'entries start after the records (i32 words)');
  assert.deepEqual(b!.penalized, [[5, 0], [7, 1], [9, 2]], 'repetition: distinct prompt + output ids, with output counts');
  assert.deepEqual([b!.repetition, b!.presence, b!.frequency], [1.3, 0.5, 0]);
  assert.deepEqual(c!.penalized, [[7, 1], [9, 2], [4, 1]], 'presence/frequency only: output ids');
  assert.equal(c!.entryStart, b!.entryStart + 3 * 2);
  assert.deepEqual(d!.masked, [2, 3, 2], 'eos ids, then stop ids');
  assert.equal(d!.numPenalized, 0);

  // once min_tokens outputs exist the mask is gone; a sampled row's record keeps its place
  const done = state({ minTokens: 1, stopTokenIds: [3] }, [1], [8], [2]);
  assert.equal(sampleParamsBytes([{ logitsRow: 0, state: done }]), SAMPLE_PARAM_BYTES);
  assert.equal(readsTokenHistory(done), false);
  assert.equal(readsTokenHistory(minTok), true);
  assert.equal(readsTokenHistory(rep), true);
  assert.equal(readsTokenHistory(plain), false);
});

test('counts follow the output as it grows between steps', () => {
  const output: number[] = [4];
  const s = state({ frequencyPenalty: 1, repetitionPenalty: 1.1 }, [4, 6], output);
  assert.deepEqual(readRow(pack([{ logitsRow: 0, state: s }]), 0).penalized, [[4, 1], [6, 0]]);
  output.push(6, 4, 11);
  assert.deepEqual(readRow(pack([{ logitsRow: 0, state: s }]), 0).penalized, [[4, 2], [6, 1], [11, 1]]);
  output.length = 1; // a history that shrank (a recomputed sequence) is counted afresh
  assert.deepEqual(readRow(pack([{ logitsRow: 0, state: s }]), 0).penalized, [[4, 1], [6, 0]]);
});

test('ids that do not fit an i32 are left out (they lie outside every vocab; the CPU ignores them)', () => {
  const big = 2 ** 32 + 5;
  const s = state({ presencePenalty: 1, repetitionPenalty: 1.5, minTokens: 5, stopTokenIds: [big, 9] }, [big, 5, -1], [big, 1.5, 5], [2]);
  const f = readRow(pack([{ logitsRow: 0, state: s }]), 0);
  assert.deepEqual(f.masked, [2, 9]);
  assert.deepEqual(f.penalized, [[5, 1]]);
});

test('penalties and min_tokens run on the device; only too many logprobs stay on the host', () => {
  assert.equal(canSampleOnDevice(state({ repetitionPenalty: 1.2, presencePenalty: 1, frequencyPenalty: -1 }, [1], [2])), true);
  assert.equal(canSampleOnDevice(state({ minTokens: 4 }, [1], [])), true);
  assert.equal(canSampleOnDevice(state({ logprobs: 21 }, [1], [])), false);
  assert.equal(canSampleOnDevice(state({ logprobs: 5 }, [1], []), 4), false);
});

test('a view too short for the entries fails with the byte counts', () => {
  const rows = [{ logitsRow: 0, state: state({ repetitionPenalty: 2 }, [1, 2, 3], []) }];
  assert.throws(() => packSampleParams(rows, new DataView(new ArrayBuffer(SAMPLE_PARAM_BYTES))), (e) => isPeregrineError(e) && e.code === 'PGN_ERR_INTERNAL' && /need 136 bytes, the view has 112/.test(e.message));
});

test('the packed entries give the CPU processors\' row, bit for bit, for every penalty combination', () => {
  let seed = 12345;
  const r = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const V = 257;
  const combos: SamplingParamsInit[] = [
    { repetitionPenalty: 1.3 }, { repetitionPenalty: 0.7 }, { presencePenalty: 0.5 }, { frequencyPenalty: -1.25 },
    { presencePenalty: -2, frequencyPenalty: 0.3 }, { repetitionPenalty: 1.1, presencePenalty: 0.2, frequencyPenalty: 0.1 },
    { minTokens: 20, stopTokenIds: [7, 300] }, { minTokens: 20, repetitionPenalty: 1.5, frequencyPenalty: 2 },
  ];
  const rows: DeviceSampleRow[] = [];
  const logits: Float32Array[] = [];
  for (const init of combos) {
    for (let k = 0; k < 4; k++) {
      // ids beyond the vocab (ignored by both) and -inf / zero logits included
      const hist = (n: number) => Array.from({ length: n }, () => (r() < 0.05 ? V + 3 : Math.floor(r() * 40)));
      const x = Float32Array.from({ length: V }, () => (r() < 0.05 ? -Infinity : r() < 0.05 ? 0 : (r() - 0.5) * 20));
      logits.push(x);
      rows.push({ logitsRow: rows.length, state: state(init, hist(1 + Math.floor(r() * 30)), hist(Math.floor(r() * 30)), [7, 11]) });
    }
  }
  const view = pack(rows);
  rows.forEach(({ state: s }, i) => {
    const want = Float32Array.from(logits[i]!);
    if (s.outputTokenIds.length < s.params.minTokens) {
      maskTokens(want, s.eosTokenIds ?? []);
      maskTokens(want, s.params.stopTokenIds);
    }
    applyPenalties(want, s.params, s);
    const got = Float32Array.from(logits[i]!);
    replayKernel(got, readRow(view, i));
    got.forEach((v, id) => assert.ok(Object.is(v, want[id]), `row ${i} ${JSON.stringify(combos[Math.floor(i / 4)])}: id ${id}: ${v} vs ${want[id]}`));
  });
});

test('a row with its newest output token in flight (pendingAt): the kernel\'s pairs + that token give the CPU\'s row with the token appended', () => {
  let seed = 777;
  const r = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const V = 97;
  const combos: SamplingParamsInit[] = [
    { repetitionPenalty: 1.3 }, { presencePenalty: 0.5 }, { frequencyPenalty: -1.25 }, { repetitionPenalty: 0.9, presencePenalty: 0.2, frequencyPenalty: 0.7 },
    { minTokens: 6, stopTokenIds: [5] }, { minTokens: 6, repetitionPenalty: 1.5 },
  ];
  for (const [ci, init] of combos.entries()) {
    for (let k = 0; k < 12; k++) {
      const prompt = Array.from({ length: 1 + Math.floor(r() * 10) }, () => Math.floor(r() * 30));
      const output = Array.from({ length: Math.floor(r() * 8) }, () => Math.floor(r() * 30));
      // the in-flight token: one already in the output, in the prompt only, or new
      const pendingId = k % 3 === 0 && output.length ? output[0]! : k % 3 === 1 ? prompt[0]! : 40 + k;
      const s = state(init, prompt, output, [7]);
      const row: DeviceSampleRow = { logitsRow: 0, state: s, pendingAt: 3 };
      const view = pack([row]);
      const f = readRow(view, 0);
      assert.equal(view.getInt32(104, true), s.params.repetitionPenalty !== 1 || s.params.presencePenalty !== 0 || s.params.frequencyPenalty !== 0 ? 3 : -1, 'pendingAt is sent for penalized rows');
      const after = state(init, prompt, [...output, pendingId], [7]);
      assert.equal(f.numMasked > 0, after.outputTokenIds.length < after.params.minTokens, `combo ${ci}: min_tokens counts the token in flight`);
      const x = Float32Array.from({ length: V }, () => (r() - 0.5) * 20);
      const want = Float32Array.from(x);
      if (after.outputTokenIds.length < after.params.minTokens) {
        maskTokens(want, after.eosTokenIds ?? []);
        maskTokens(want, after.params.stopTokenIds);
      }
      applyPenalties(want, after.params, after);
      const got = Float32Array.from(x);
      replayKernel(got, f, view.getInt32(104, true) >= 0 ? pendingId : -1);
      got.forEach((v, id) => assert.ok(Object.is(v, want[id]), `combo ${ci} case ${k}: id ${id}: ${v} vs ${want[id]}`));
    }
  }
  // without pendingAt the record says -1
  assert.equal(pack([{ logitsRow: 0, state: state({ repetitionPenalty: 2 }, [1], [2]) }]).getInt32(104, true), -1);
});
