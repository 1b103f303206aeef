/**
 * Penalties and min_tokens on the GPU sampler (sample-params.ts, kernels/penalties.cuh) against
 * the CPU sampler (sampleRow) on fresh random logits (PEREGRINE_TEST_SEED to replay): every
 * combination of repetition / presence / frequency penalties, with min_tokens masking on and
 * off, greedy and seeded, in batches mixed with plain rows, for vocab 128256 and small odd
 * vocabs. Histories reuse the row's best ids (so the penalties decide the token), repeat ids,
 * and hold ids outside the vocab. Greedy tokens must be identical; sampled tokens may differ only
 * where the CPU's own choice sits within float rounding of a boundary (counted, must be rare);
 * logprobs within 1e-4; the Rng advanced identically; the logits left as they were.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { DeviceSampleRow } from '../../src/backends/cuda/cuda-sampler.js';
import { isPeregrineError } from '../../src/errors.js';
import { createSamplingState, makeSamplingParams, sampleRow, type SampleResult, type SamplingParamsInit, type SequenceSamplingState } from '../../src/sampling/index.js';
import { openCuda, rng, SEED } from './cuda-harness.js';
import { timeSamplerSteps } from './sampler-timing.js';

const PENALTIES: SamplingParamsInit[] = [];
for (const repetitionPenalty of [1, 1.3, 0.8]) {
  for (const presencePenalty of [0, 0.7, -1.5]) {
    for (const frequencyPenalty of [0, 0.4, -0.9]) PENALTIES.push({ repetitionPenalty, presencePenalty, frequencyPenalty });
  }
}
const MODES: SamplingParamsInit[] = [
  { temperature: 0 }, { temperature: 0, logprobs: 3 }, { temperature: 1 },
  { temperature: 0.8, topK: 40, topP: 0.9 }, { temperature: 1.2, minP: 0.05, logprobs: 5 },
];
const EOS = [2];
const MAX_TOKENS = 64;

function lpError(a: number, b: number): number {
  return Object.is(a, b) ? 0 : Math.abs(a - b);
}

function gaussLogits(V: number, r: () => number): Float32Array {
  const x = new Float32Array(V);
  for (let i = 0; i < V; i++) x[i] = r() < 0.02 ? -Infinity : Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r()) * 2;
  x[V >> 1] = 1;
  return x;
}

/** ids to put in a history: mostly the row's best, with repeats, some random, some outside the vocab */
function historyIds(x: Float32Array, n: number, r: () => number): number[] {
  const best = Array.from(x.keys()).filter((i) => x[i]! > 1.5).slice(0, 64);
  return Array.from({ length: n }, () => {
    const u = r();
    if (u < 0.05) return x.length + Math.floor(r() * 5);
    if (u < 0.7 && best.length > 0) return best[Math.floor(r() * best.length)]!;
    return Math.floor(r() * x.length);
  });
}

/** Two states with equal params, history and Rng position: one for the GPU, one for sampleRow. */
function twins(init: SamplingParamsInit, prompt: number[], output: number[], seed: number): [SequenceSamplingState, SequenceSamplingState] {
  const params = makeSamplingParams({ maxTokens: MAX_TOKENS, ...init, seed });
  return [createSamplingState(params, prompt, output, 0, EOS), createSamplingState(params, prompt, output, 0, EOS)];
}

interface Tally {
  numRows: number;
  numMismatch: number;
  worstLp: number;
}

/** Asserts the GPU result against sampleRow's on the twin; counts sampled-token mismatches. */
function compare(got: SampleResult, want: SampleResult, state: SequenceSamplingState, twin: SequenceSamplingState, what: string, tally: Tally, log: (s: string) => void): void {
  tally.numRows++;
  if (got.tokenId !== want.tokenId) {
    assert.ok(state.params.temperature > 0, `${what}: greedy token ${got.tokenId} vs CPU ${want.tokenId}`);
    tally.numMismatch++;
    log(`token differs: ${what}: gpu ${got.tokenId}, cpu ${want.tokenId}`);
  }
  if (state.params.logprobs === null) {
    assert.ok(Number.isNaN(got.logprob) && got.topLogprobs === null, `${what}: no logprobs asked`);
  } else {
    if (got.tokenId === want.tokenId) tally.worstLp = Math.max(tally.worstLp, lpError(got.logprob, want.logprob));
    assert.deepEqual(got.topLogprobs!.map((t) => t.tokenId), want.topLogprobs!.map((t) => t.tokenId), `${what}: top ids (raw logits)`);
    want.topLogprobs!.forEach((w, j) => (tally.worstLp = Math.max(tally.worstLp, lpError(got.topLogprobs![j]!.logprob, w.logprob))));
  }
  for (let k = 0; k < 3; k++) assert.equal(state.rng!.nextFloat(), twin.rng!.nextFloat(), `${what}: Rng after the step, draw ${k}`);
}

const { gpu, reason } = openCuda();

if (!gpu) {
  test('CUDA penalties and min_tokens', (t) => t.skip(`no CUDA device: ${reason}`));
} else {
  after(() => gpu.dispose());
  const r = rng(SEED);

  describe(`CUDA penalties and min_tokens on ${gpu.props.name} (seed ${SEED})`, () => {
    test('equal sampleRow for every penalty combination, min_tokens on and off, greedy and seeded, mixed with plain rows', async (t) => {
      const tally: Tally = { numRows: 0, numMismatch: 0, worstLp: 0 };
      for (const V of [128256, 32003, 1001, 7]) {
        const inits: SamplingParamsInit[] = [];
        for (const mode of MODES) {
          for (const pen of PENALTIES) inits.push({ ...mode, ...pen });
          inits.push({ ...mode, minTokens: 8, stopTokenIds: [3, V >> 1] }, { ...mode, minTokens: 8, stopTokenIds: [V + 1], repetitionPenalty: 1.4, frequencyPenalty: 0.5 });
        }
        const numLogitRows = inits.length;
        const logits = new Float32Array(numLogitRows * V);
        const rows: DeviceSampleRow[] = [], mates: SequenceSamplingState[] = [], whats: string[] = [];
        inits.forEach((init, i) => {
          const x = gaussLogits(V, r);
          // min_tokens rows: eos and a stop id hold the best logits, so an unmasked row picks them
          if (init.minTokens) for (const id of [...EOS, 3]) if (id < V) x[id] = 9;
          logits.set(x, i * V);
          const outputLen = init.minTokens ? Math.floor(r() * 12) : Math.floor(r() * 40);
          const [a, b] = twins(init, historyIds(x, 1 + Math.floor(r() * 60), r), historyIds(x, outputLen, r), Math.floor(r() * 2 ** 40));
          for (let k = Math.floor(r() * 5); k > 0; k--) { a.rng!.nextFloat(); b.rng!.nextFloat(); }
          rows.push({ logitsRow: numLogitRows - 1 - i, state: a }); // another order than the logits
          mates.push(b);
          whats.push(`V=${V} ${JSON.stringify(init)} outputs ${outputLen}`);
        });
        const sampler = gpu.createSampler(rows.length, V);
        const xs = gpu.fromF32([numLogitRows, V], logits);
        try {
          const got = await sampler.sample(xs, rows);
          rows.forEach(({ logitsRow, state }, i) => {
            const want = sampleRow(logits.subarray(logitsRow * V, (logitsRow + 1) * V), mates[i]!);
            compare(got[i]!, want, state, mates[i]!, whats[i]!, tally, (s) => t.diagnostic(s));
          });
          const back = await gpu.downloadF32(xs);
          assert.ok(back.every((v, i) => Object.is(v, logits[i]!)), `V=${V}: logits unchanged`);
        } finally {
          gpu.free(xs);
          sampler.dispose();
        }
      }
      t.diagnostic(`${tally.numRows} rows, ${tally.numMismatch} sampled tokens differ, worst |logprob error| ${tally.worstLp.toExponential(2)}`);
      assert.ok(tally.worstLp < 1e-4, `worst logprob error ${tally.worstLp}`);
      assert.ok(tally.numMismatch <= 1 + tally.numRows / 200, `${tally.numMismatch} of ${tally.numRows} tokens differ from the CPU's (seed ${SEED})`);
    });

    test('min_tokens masks eos and stop ids until enough outputs exist; a row with only masked logits fails as on the CPU', async () => {
      const V = 1003;
      const x = new Float32Array(2 * V).fill(-Infinity);
      x.fill(0, 0, V);
      x[2] = 5; x[17] = 4; x[40] = 3; // eos, stop id, then the best other id
      x[V + 2] = 1; x[V + 17] = 1; // row 1: only eos and the stop id are finite
      const sampler = gpu.createSampler(2, V);
      const xs = gpu.fromF32([2, V], x);
      try {
        const output = [7, 7];
        const [masked] = twins({ temperature: 0, minTokens: 3, stopTokenIds: [17] }, [1], output, 1);
        assert.equal((await sampler.sample(xs, [{ logitsRow: 0, state: masked }]))[0]!.tokenId, 40, 'eos and stop masked below min_tokens');
        output.push(40);
        assert.equal((await sampler.sample(xs, [{ logitsRow: 0, state: masked }]))[0]!.tokenId, 2, 'unmasked once min_tokens outputs exist');
        const [dead, deadCpu] = twins({ temperature: 0.9, minTokens: 3, stopTokenIds: [17] }, [1], [], 2);
        assert.throws(() => sampleRow(x.subarray(V), deadCpu), (e) => isPeregrineError(e) && e.code === 'PGN_ERR_INTERNAL');
        await assert.rejects(sampler.sample(xs, [{ logitsRow: 0, state: masked }, { logitsRow: 1, state: dead }]), (e) => isPeregrineError(e) && e.code === 'PGN_ERR_INTERNAL' && /-inf or NaN/.test(e.message));
      } finally {
        gpu.free(xs);
        sampler.dispose();
      }
    });

    test('long histories grow the parameter buffer; later small steps still sample right', async (t) => {
      const V = 32003, N = 8;
      const logits = new Float32Array(N * V);
      for (let i = 0; i < N; i++) logits.set(gaussLogits(V, r), i * V);
      const sampler = gpu.createSampler(N, V);
      const xs = gpu.fromF32([N, V], logits);
      try {
        for (const promptLen of [6000, 50, 12000]) {
          const rows: DeviceSampleRow[] = [], mates: SequenceSamplingState[] = [];
          for (let i = 0; i < N; i++) {
            const prompt = Array.from({ length: promptLen }, () => Math.floor(r() * V));
            const init = i % 2 === 0 ? { temperature: 0, repetitionPenalty: 1.2, logprobs: 2 } : { temperature: 0.9, repetitionPenalty: 0.9, presencePenalty: 0.3, frequencyPenalty: 0.2 };
            const [a, b] = twins(init, prompt, historyIds(logits.subarray(i * V, (i + 1) * V), 30, r), i + promptLen);
            rows.push({ logitsRow: i, state: a });
            mates.push(b);
          }
          const got = await sampler.sample(xs, rows);
          const tally: Tally = { numRows: 0, numMismatch: 0, worstLp: 0 };
          rows.forEach(({ logitsRow, state }, i) => compare(got[i]!, sampleRow(logits.subarray(logitsRow * V, (logitsRow + 1) * V), mates[i]!), state, mates[i]!, `prompt ${promptLen} row ${i}`, tally, (s) => t.diagnostic(s)));
          assert.ok(tally.numMismatch <= 1, `prompt ${promptLen}: ${tally.numMismatch} sampled tokens differ`);
          assert.ok(tally.worstLp < 1e-4, `prompt ${promptLen}: logprob error ${tally.worstLp}`);
        }
      } finally {
        gpu.free(xs);
        sampler.dispose();
      }
    });

    test('a token in flight (pendingAt, read from the pending ids): equals sampleRow on the history with that token appended', async (t) => {
      const V = 32003;
      const inits: SamplingParamsInit[] = [];
      for (const mode of MODES.slice(0, 3)) {
        for (const pen of PENALTIES.filter((_, k) => k % 4 === 1)) inits.push({ ...mode, ...pen });
        inits.push({ ...mode, minTokens: 6, stopTokenIds: [3], repetitionPenalty: 1.3 });
      }
      const n = inits.length;
      const logits = new Float32Array(n * V);
      const rows: DeviceSampleRow[] = [], mates: SequenceSamplingState[] = [], pendingIds = new Int32Array(n + 5).fill(-7);
      inits.forEach((init, i) => {
        const x = gaussLogits(V, r);
        if (init.minTokens) for (const id of [...EOS, 3]) x[id] = 9;
        logits.set(x, i * V);
        const prompt = historyIds(x, 1 + Math.floor(r() * 20), r), output = historyIds(x, Math.floor(r() * 6), r);
        // the token in flight: the row's best id (so its penalty decides), one of the output, or one of the prompt
        const best = Array.from(x.keys()).reduce((a, b) => (x[b]! > x[a]! ? b : a), 0);
        const pending = i % 3 === 0 ? best : i % 3 === 1 && output.length ? output[0]! : prompt[0]!;
        const seed = Math.floor(r() * 2 ** 40);
        const [a] = twins(init, prompt, output, seed);
        const [, b] = twins(init, prompt, [...output, pending], seed);
        pendingIds[i + 5] = pending;
        rows.push({ logitsRow: i, state: a, pendingAt: i + 5 });
        mates.push(b);
      });
      const sampler = gpu.createSampler(n, V);
      const xs = gpu.fromF32([n, V], logits);
      const ids = gpu.fromI32([pendingIds.length], pendingIds);
      try {
        const words = sampler.launch(xs, rows, ids);
        const got = sampler.unpack(rows, await gpu.downloadI32(words));
        const tally: Tally = { numRows: 0, numMismatch: 0, worstLp: 0 };
        rows.forEach(({ state }, i) => compare(got[i]!, sampleRow(logits.subarray(i * V, (i + 1) * V), mates[i]!), state, mates[i]!, `${JSON.stringify(inits[i])} pending ${pendingIds[i + 5]}`, tally, (s) => t.diagnostic(s)));
        assert.ok(tally.numMismatch <= 1, `${tally.numMismatch} sampled tokens differ`);
        assert.ok(tally.worstLp < 1e-4, `logprob error ${tally.worstLp}`);
        assert.throws(() => sampler.launch(xs, rows), (e) => isPeregrineError(e) && /pending-ids tensor/.test(e.message));
      } finally {
        for (const tensor of [xs, ids]) gpu.free(tensor);
        sampler.dispose();
      }
    });

    test('timing: 256 rows x vocab 128256 with penalties (1000-token prompts, 100 outputs) against plain rows', async (t) => {
      const V = 128256, N = 256;
      const hist = (n: number) => Array.from({ length: n }, () => Math.floor(r() * V));
      const inits: SamplingParamsInit[] = [{ temperature: 0 }, { temperature: 0, repetitionPenalty: 1.1, presencePenalty: 0.5, frequencyPenalty: 0.5 }, { temperature: 0.8, topP: 0.9 }, { temperature: 0.8, topP: 0.9, repetitionPenalty: 1.1, frequencyPenalty: 0.5 }, { temperature: 0.8, minTokens: 200, stopTokenIds: [5, 6] }];
      await timeSamplerSteps(gpu, t, N, V, inits, (init) => Array.from({ length: N }, (_, i) => ({ logitsRow: i, state: createSamplingState(makeSamplingParams({ maxTokens: 256, ...init, seed: i }), hist(1000), hist(100), 0, EOS) })));
    });
  });
}
