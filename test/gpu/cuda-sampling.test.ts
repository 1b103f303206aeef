/**
 * Sampling on the GPU (CudaSampler, kernels/sampling.cu) against the CPU sampler: on fresh
 * random logits (PEREGRINE_TEST_SEED to replay) for vocab 128256 and small odd vocabs, every
 * parameter combination gives sampleRow's token from the same Rng state (a token may differ
 * only where the CPU's own choice sits within float rounding of a boundary: counted, must be
 * rare), logprobs within 1e-4, and the Rng advanced identically. Through the engine, GPU
 * sampling gives the outputs of host sampling on the same backend (seeded, filtered, logprobs,
 * penalties and min_tokens) and the CPU backend's greedy tokens. Penalties and min_tokens on
 * the device: cuda-penalties.test.ts. The Rng position/skip and parameter packing checks run
 * without a GPU too.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LLM } from '../../src/api/llm.js';
import type { RequestOutput } from '../../src/api/outputs.js';
import { canSampleOnDevice, packSampleParams, SAMPLE_PARAM_BYTES, unpackSampleResults, type DeviceSampleRow } from '../../src/backends/cuda/cuda-sampler.js';
import { isPeregrineError } from '../../src/errors.js';
import { createSamplingState, makeSamplingParams, philox4x32, Rng, sampleRow, type SamplingParamsInit, type SequenceSamplingState } from '../../src/sampling/index.js';
import { openCuda, rng, SEED } from './cuda-harness.js';
import { timeSamplerSteps } from './sampler-timing.js';

const DEMO = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'models', 'demo');

const COMBOS: SamplingParamsInit[] = [
  { temperature: 0 }, { temperature: 0, logprobs: 5 }, { temperature: 1 }, { temperature: 0.7 },
  { temperature: 1, topK: 1 }, { temperature: 0.8, topK: 50 }, { temperature: 1, topP: 0.9 }, { temperature: 1.3, topP: 0.5 },
  { temperature: 1, minP: 0.1 }, { temperature: 0.9, topK: 50, topP: 0.9, minP: 0.05 }, { temperature: 1, logprobs: 0 },
  { temperature: 0.6, topP: 0.95, logprobs: 5 }, { temperature: 1, topK: 7, logprobs: 20 }, { temperature: 2, topP: 0.3, minP: 0.2 },
];
const KINDS = ['normal', 'ties', 'peaked', 'neginf'] as const;

/** |a - b|, 0 where both are the same infinity (a -inf logit's logprob) */
function lpError(a: number, b: number): number {
  return Object.is(a, b) ? 0 : Math.abs(a - b);
}

/** Two states with equal params and equal Rng positions: one for the GPU, one for sampleRow. */
function twinStates(init: SamplingParamsInit, seed: number, skip: number): [SequenceSamplingState, SequenceSamplingState] {
  const params = makeSamplingParams({ ...init, seed });
  const a = createSamplingState(params, [1, 2, 3], []);
  const b = createSamplingState(params, [1, 2, 3], []);
  for (let i = 0; i < skip; i++) {
    a.rng!.nextFloat();
    b.rng!.nextFloat();
  }
  return [a, b];
}

function randomLogits(V: number, kind: (typeof KINDS)[number], r: () => number): Float32Array {
  const gauss = () => Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r());
  const x = new Float32Array(V);
  for (let i = 0; i < V; i++) {
    if (kind === 'ties') x[i] = Math.round(gauss() * 4) / 4; // many exactly equal logits
    else if (kind === 'peaked') x[i] = gauss() * 3 + (i % 997 === 5 ? 12 : 0);
    else if (kind === 'neginf') x[i] = r() < 0.5 ? -Infinity : gauss() * 2;
    else x[i] = gauss() * 2;
  }
  if (kind === 'neginf') x[V >> 1] = gauss() * 2; // at least one finite logit
  return x;
}

test('Rng.position + skip(1) give the word nextUint32 would, and leave the same state', () => {
  for (const seed of [0, 1, -5, 2 ** 40 + 3]) {
    for (let pre = 0; pre < 9; pre++) {
      const a = new Rng(seed), b = new Rng(seed);
      for (let i = 0; i < pre; i++) { a.nextUint32(); b.nextUint32(); }
      const { key0, key1, counter, word } = a.position();
      const block = new Uint32Array(4);
      philox4x32(counter, key0, key1, block); // as the kernel computes it
      a.skip(1);
      assert.equal(block[word], b.nextUint32(), `seed ${seed}, ${pre} words before`);
      for (let i = 0; i < 6; i++) assert.equal(a.nextUint32(), b.nextUint32(), `seed ${seed}, ${pre} words before, word ${i} after`);
    }
  }
});

test('packSampleParams writes the kernel layout and skips one draw for sampled rows only', () => {
  const [greedy] = twinStates({ temperature: 0, logprobs: 3 }, 5, 0);
  const [sampled, twin] = twinStates({ temperature: 0.5, topK: 9, topP: 0.75, minP: 0.25 }, 6, 2);
  const rows: DeviceSampleRow[] = [{ logitsRow: 4, state: greedy }, { logitsRow: 1, state: sampled }];
  const view = new DataView(new ArrayBuffer(2 * SAMPLE_PARAM_BYTES));
  const before = twin.rng!.position();
  packSampleParams(rows, view);
  assert.equal(view.getInt32(32, true), 4);
  assert.equal(view.getInt32(36, true), 1, 'greedy flag');
  assert.equal(view.getInt32(28, true), 3, 'logprobs');
  const o = SAMPLE_PARAM_BYTES;
  assert.equal(view.getFloat64(o, true), 0.5);
  assert.equal(view.getFloat64(o + 8, true), 0.75);
  assert.equal(view.getFloat64(o + 16, true), 0.25);
  assert.equal(view.getInt32(o + 24, true), 9);
  assert.equal(view.getInt32(o + 28, true), -1, 'no logprobs');
  assert.equal(view.getInt32(o + 36, true), 0);
  assert.deepEqual([view.getUint32(o + 40, true), view.getUint32(o + 44, true)], [before.key0, before.key1]);
  assert.deepEqual([0, 1, 2, 3].map((i) => view.getUint32(o + 48 + 4 * i, true)), Array.from(before.counter));
  assert.equal(view.getUint32(o + 64, true), before.word);
  twin.rng!.nextFloat();
  assert.equal(sampled.rng!.nextFloat(), twin.rng!.nextFloat(), 'the sampled row moved one draw on');
  assert.deepEqual(greedy.rng!.position(), createSamplingState(greedy.params, [], []).rng!.position(), 'greedy draws nothing');

  const stride = 8;
  const out = new Int32Array(2 * stride);
  const f = new Float32Array(out.buffer);
  out.set([17, 0, 3, 0, 9, 0, 2, 0, -1], 0);
  f[1] = -0.5; f[3] = -1.25; f[5] = -2; f[7] = -3;
  assert.throws(() => unpackSampleResults(rows, out, stride, 32), (e) => isPeregrineError(e) && e.code === 'PGN_ERR_INTERNAL' && /-inf or NaN/.test(e.message));
  const [res] = unpackSampleResults(rows.slice(0, 1), out, stride, 32);
  assert.deepEqual(res, { tokenId: 17, logprob: -0.5, topLogprobs: [{ tokenId: 3, logprob: -1.25 }, { tokenId: 9, logprob: -2 }, { tokenId: 2, logprob: -3 }] });
});

test('only rows asking for too many logprobs stay on the host', () => {
  const state = (init: SamplingParamsInit, outputs: number[] = []) => createSamplingState(makeSamplingParams(init), [1], outputs);
  assert.equal(canSampleOnDevice(state({ temperature: 0.7, topP: 0.9, logprobs: 20 })), true);
  assert.equal(canSampleOnDevice(state({ repetitionPenalty: 1.1 })), true);
  assert.equal(canSampleOnDevice(state({ presencePenalty: 0.5, frequencyPenalty: -0.5 })), true);
  assert.equal(canSampleOnDevice(state({ minTokens: 2 }, [5])), true);
  assert.equal(canSampleOnDevice(state({ logprobs: 21 })), false);
  assert.equal(canSampleOnDevice(state({ logprobs: 5 }), 4), false);
});

const { gpu, reason } = openCuda();

if (!gpu) {
  test('CUDA sampling', (t) => t.skip(`no CUDA device: ${reason}`));
} else {
  after(() => gpu.dispose());
  const r = rng(SEED);

  describe(`CUDA sampling on ${gpu.props.name} (seed ${SEED}, kernels from ${gpu.kernels.origin})`, () => {
    test('equals sampleRow on random logits for every parameter combination, vocab 128256 and small odd vocabs', async (t) => {
      let numRows = 0, numMismatch = 0, worstLp = 0;
      for (const V of [128256, 32003, 1001, 7, 1]) {
        const rows: DeviceSampleRow[] = [];
        const twins: SequenceSamplingState[] = [];
        const numLogitRows = KINDS.length * COMBOS.length;
        const logits = new Float32Array(numLogitRows * V);
        KINDS.forEach((kind, k) => COMBOS.forEach((init, c) => {
          const row = k * COMBOS.length + c;
          logits.set(randomLogits(V, kind, r), row * V);
          const [a, b] = twinStates(init, Math.floor(r() * 2 ** 40), Math.floor(r() * 7));
          // rows in another order than the logits, to check logitsRow
          rows.push({ logitsRow: numLogitRows - 1 - row, state: a });
          twins.push(b);
        }));
        const sampler = gpu.createSampler(rows.length, V);
        const x = gpu.fromF32([numLogitRows, V], logits);
        try {
          const got = await sampler.sample(x, rows);
          rows.forEach(({ logitsRow, state }, i) => {
            const what = `V=${V} ${KINDS[Math.floor((numLogitRows - 1 - logitsRow) / COMBOS.length)]} ${JSON.stringify(COMBOS[(numLogitRows - 1 - logitsRow) % COMBOS.length])}`;
            const want = sampleRow(logits.subarray(logitsRow * V, (logitsRow + 1) * V), twins[i]!);
            const g = got[i]!;
            numRows++;
            if (g.tokenId !== want.tokenId) {
              numMismatch++;
              t.diagnostic(`token differs: ${what}: gpu ${g.tokenId}, cpu ${want.tokenId}`);
            }
            if (state.params.logprobs === null) {
              assert.ok(Number.isNaN(g.logprob) && g.topLogprobs === null, `${what}: no logprobs asked`);
            } else {
              if (g.tokenId === want.tokenId) worstLp = Math.max(worstLp, lpError(g.logprob, want.logprob));
              assert.equal(g.topLogprobs!.length, want.topLogprobs!.length, `${what}: top-n count`);
              want.topLogprobs!.forEach((w, j) => {
                assert.equal(g.topLogprobs![j]!.tokenId, w.tokenId, `${what}: top-${j} id`);
                worstLp = Math.max(worstLp, lpError(g.topLogprobs![j]!.logprob, w.logprob));
              });
            }
            for (let k = 0; k < 3; k++) assert.equal(state.rng!.nextFloat(), twins[i]!.rng!.nextFloat(), `${what}: Rng after the step, draw ${k}`);
          });
          // the logits are left as they were
          const back = await gpu.downloadF32(x);
          assert.ok(back.every((v, i) => Object.is(v, logits[i]!)), `V=${V}: logits unchanged`);
        } finally {
          gpu.free(x);
          sampler.dispose();
        }
      }
      t.diagnostic(`${numRows} rows, ${numMismatch} tokens differ, worst |logprob error| ${worstLp.toExponential(2)}`);
      assert.ok(worstLp < 1e-4, `worst logprob error ${worstLp}`);
      assert.ok(numMismatch <= 1 + numRows / 200, `${numMismatch} of ${numRows} tokens differ from the CPU's (seed ${SEED})`);
    });

    test('a row with no finite logit fails as on the CPU; refused rows, bad shapes and rows name the problem', async () => {
      const V = 513;
      const sampler = gpu.createSampler(4, V);
      const x = gpu.fromF32([2, V], new Float32Array(2 * V).fill(-Infinity).fill(0.5, V));
      try {
        for (const init of [{ temperature: 0 }, { temperature: 0.8, topP: 0.5 }]) {
          const [a] = twinStates(init, 1, 0);
          await assert.rejects(sampler.sample(x, [{ logitsRow: 1, state: a }, { logitsRow: 0, state: a }]), (e) => isPeregrineError(e) && e.code === 'PGN_ERR_INTERNAL' && /-inf or NaN/.test(e.message));
        }
        const [ok] = twinStates({ temperature: 0 }, 1, 0);
        assert.equal((await sampler.sample(x, [{ logitsRow: 1, state: ok }]))[0]!.tokenId, 0, 'argmax ties go to the lowest id');
        const [many] = twinStates({ logprobs: 21 }, 1, 0);
        await assert.rejects(sampler.sample(x, [{ logitsRow: 1, state: many }]), (e) => isPeregrineError(e) && /21 logprobs, more than maxTopN 20: sample it on the host/.test(e.message));
        await assert.rejects(sampler.sample(x, [{ logitsRow: 2, state: ok }]), (e) => isPeregrineError(e) && /row 2 is outside \[0, 2\)/.test(e.message));
        const wrong = gpu.fromF32([1, 512], new Float32Array(512));
        await assert.rejects(sampler.sample(wrong, [{ logitsRow: 0, state: ok }]), (e) => isPeregrineError(e) && /512 entries.*vocab of 513/.test(e.message));
        gpu.free(wrong);
        assert.throws(() => gpu.createSampler(0, V), (e) => isPeregrineError(e) && /maxRows/.test(e.message));
        assert.throws(() => gpu.createSampler(4, V, 21), (e) => isPeregrineError(e) && /maxTopN/.test(e.message));
      } finally {
        gpu.free(x);
        sampler.dispose();
      }
    });

    test('downloadRows returns exactly the rows asked for', async () => {
      const V = 1001;
      const data = Float32Array.from({ length: 5 * V }, () => r() * 10 - 5);
      const sampler = gpu.createSampler(8, V);
      const x = gpu.fromF32([5, V], data);
      try {
        const got = await sampler.downloadRows(x, [4, 0, 4]);
        assert.deepEqual(Array.from(got), [...data.subarray(4 * V, 5 * V), ...data.subarray(0, V), ...data.subarray(4 * V, 5 * V)]);
      } finally {
        gpu.free(x);
        sampler.dispose();
      }
    });

    test('timing: one step of 256 rows x vocab 128256 (sample + download of ids and logprobs)', async (t) => {
      const V = 128256, N = 256;
      const inits: SamplingParamsInit[] = [{ temperature: 0 }, { temperature: 1 }, { temperature: 0.7, logprobs: 1 }, { temperature: 0.8, topK: 50, topP: 0.9, minP: 0.05, logprobs: 5 }, { temperature: 1, topP: 0.95 }];
      await timeSamplerSteps(gpu, t, N, V, inits, (init) => Array.from({ length: N }, (_, i) => ({ logitsRow: i, state: twinStates(init, i, 0)[0] })));
    });
  });

  test('the engine on CUDA samples on the device: same outputs as host sampling, and the CPU backend\'s greedy tokens', async (t) => {
    const prompts = [[5, 17, 300, 41, 9], [1200, 33, 7], [64, 64, 64, 2000, 100, 7, 19, 250]];
    const requests: [number[], SamplingParamsInit][] = [
      [prompts[0]!, { temperature: 0, maxTokens: 12, ignoreEos: true, logprobs: 2 }],
      [prompts[1]!, { temperature: 0, maxTokens: 12, ignoreEos: true, logprobs: 2 }],
      [prompts[2]!, { temperature: 0.8, topK: 40, topP: 0.9, minP: 0.02, seed: 7, maxTokens: 16, ignoreEos: true, logprobs: 3 }],
      [prompts[0]!, { temperature: 1, seed: 11, maxTokens: 16, ignoreEos: true, logprobs: 0 }],
      [prompts[1]!, { temperature: 0.7, repetitionPenalty: 1.3, seed: 5, maxTokens: 12, ignoreEos: true }],
      [prompts[2]!, { temperature: 0.9, minTokens: 4, seed: 3, maxTokens: 10, logprobs: 1 }],
      [prompts[1]!, { n: 2, temperature: 1.1, topP: 0.8, seed: 9, maxTokens: 8, ignoreEos: true }],
      [prompts[0]!, { temperature: 0, presencePenalty: 0.8, frequencyPenalty: 1.5, minTokens: 3, maxTokens: 12, logprobs: 2 }],
    ];
    const run = async (device: 'cpu' | 'cuda', gpuSampling: boolean): Promise<RequestOutput[]> => {
      const saved = process.env.PEREGRINE_GPU_SAMPLING;
      if (!gpuSampling) process.env.PEREGRINE_GPU_SAMPLING = '0';
      const llm = await LLM.load(DEMO, { device, numKvBlocks: 256, maxNumSeqs: 8 });
      try {
        return await Promise.all(requests.map(([p, init]) => llm.generate(p, init).then((o) => o[0]!)));
      } finally {
        await llm.close();
        if (saved === undefined) delete process.env.PEREGRINE_GPU_SAMPLING;
        else process.env.PEREGRINE_GPU_SAMPLING = saved;
      }
    };
    const onDevice = await run('cuda', true);
    const onHost = await run('cuda', false);
    requests.forEach(([, init], i) => onHost[i]!.outputs.forEach((h, j) => {
      const d = onDevice[i]!.outputs[j]!;
      const what = `request ${i} ${JSON.stringify(init)} choice ${j}`;
      assert.deepEqual(d.tokenIds, h.tokenIds, what);
      assert.equal(d.logprobs === null, h.logprobs === null, what);
      d.logprobs?.forEach((lp, k) => {
        const hl = h.logprobs![k]!;
        assert.ok(Math.abs(lp.logprob - hl.logprob) < 1e-4, `${what} step ${k}: logprob ${lp.logprob} vs ${hl.logprob}`);
        assert.deepEqual(lp.topLogprobs.map((x) => x.tokenId), hl.topLogprobs.map((x) => x.tokenId), `${what} step ${k}: top ids`);
      });
    }));

    // the CPU backend computes f32 logits, CUDA bf16: greedy tokens agree until a step whose
    // top-2 margin (on the CPU) is within bf16 error
    const cpu = await run('cpu', false);
    for (const i of [0, 1]) {
      const c = cpu[i]!.outputs[0]!, d = onDevice[i]!.outputs[0]!;
      const k = c.tokenIds.findIndex((id, s) => id !== d.tokenIds[s]);
      if (k < 0) continue;
      const top = c.logprobs?.[k]?.topLogprobs;
      t.diagnostic(`greedy request ${i} parts from the CPU backend at step ${k}`);
      assert.ok(top && top.length >= 2 && top[0]!.logprob - top[1]!.logprob < 0.1, `greedy request ${i}: CUDA ${d.tokenIds.join(',')} vs CPU ${c.tokenIds.join(',')} part at step ${k} with a clear CPU margin`);
    }
  });
}
