/**
 * One side of pdl.test.ts's A/B, run in its own process (PEREGRINE_PDL is read once per process):
 * `node dist/test/gpu/pdl-child.js <dir>` writes into <dir> the raw results of
 *   - rmsNorm with the fused residual, attention decode (split along the keys, so with the combine
 *     kernel) and GPU sampling, launched back to back on fixed inputs;
 *   - greedy decoding of golden fixtures through CUDA graphs (prefill eager), logits of every step;
 * as <what>.bin (f32) files plus meta.json (tokens, sampling results, whether PDL was on).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DeviceSampleRow } from '../../src/backends/cuda/cuda-sampler.js';
import { CudaBackend } from '../../src/backends/cuda/cuda-backend.js';
import { loadModel } from '../../src/models/load-model.js';
import { ModelRunner } from '../../src/runner/model-runner.js';
import { simpleGenerate } from '../../src/runner/simple-generate.js';
import { createSamplingState, makeSamplingParams, type SamplingParamsInit } from '../../src/sampling/index.js';
import { loadGolden } from '../helpers/golden.js';
import { rng } from '../helpers/random.js';

/** dense, GQA + qk-norm, MoE */
const FIXTURES = ['llama-gqa-llama3', 'qwen3', 'mixtral'];
const SAMPLING: SamplingParamsInit[] = [
  { temperature: 0 }, { temperature: 0, logprobs: 5 }, { temperature: 0.8, topK: 50 }, { temperature: 1, topP: 0.9 },
  { temperature: 1, minP: 0.1, logprobs: 3 }, { temperature: 0.7, topK: 20, topP: 0.8, repetitionPenalty: 1.2 },
];

export interface PdlChildMeta {
  pdlActive: boolean;
  device: string;
  computeCapability: readonly [number, number];
  sampling: { tokenId: number; logprob: number | null; topLogprobs: { tokenId: number; logprob: number }[] | null }[];
  fixtures: Record<string, { tokenIds: number[][]; numCapturedGraphs: number }>;
}

const dir = process.argv[2];
if (!dir) throw new Error('usage: pdl-child.js <output dir>');
const write = (name: string, data: Float32Array) => writeFileSync(join(dir, `${name}.bin`), new Uint8Array(data.buffer, data.byteOffset, data.byteLength));

const r = rng(20261128);
const uniform = (n: number, scale = 1) => Float32Array.from({ length: n }, () => (r() * 2 - 1) * scale);

async function runOps(be: CudaBackend): Promise<PdlChildMeta['sampling']> {
  // rmsNorm [T, H] with the residual add
  const T = 7, H = 4096;
  const x = be.fromF32([T, H], uniform(T * H), 'bf16');
  const residual = be.fromF32([T, H], uniform(T * H), 'bf16');
  const weight = be.fromF32([H], uniform(H), 'bf16');
  const normOut = be.empty([T, H], 'bf16');
  // attention decode: 3 sequences, 32 heads over 8 KV heads, D 128; the long one splits along the keys
  const contexts = [2049, 300, 17], numHeads = 32, numKvHeads = 8, D = 128, blockSize = 16;
  const maxBlocksPerSeq = Math.ceil(Math.max(...contexts) / blockSize) + 1;
  const numBlocks = contexts.reduce((a, k) => a + Math.ceil(k / blockSize), 0) + 2;
  const pool = Array.from({ length: numBlocks }, (_, i) => i).sort(() => r() - 0.5);
  const tables = new Int32Array(contexts.length * maxBlocksPerSeq).fill(-1);
  let next = 0;
  contexts.forEach((k, s) => { for (let b = 0; b < Math.ceil(k / blockSize); b++) tables[s * maxBlocksPerSeq + b] = pool[next++]!; });
  const kvWidth = numKvHeads * D;
  const cache = { k: be.fromF32([numBlocks * blockSize, kvWidth], uniform(numBlocks * blockSize * kvWidth), 'bf16'), v: be.fromF32([numBlocks * blockSize, kvWidth], uniform(numBlocks * blockSize * kvWidth), 'bf16') };
  const qkv = be.fromF32([contexts.length, (numHeads + 2 * numKvHeads) * D], uniform(contexts.length * (numHeads + 2 * numKvHeads) * D), 'bf16');
  const attnOut = be.empty([contexts.length, numHeads * D], 'bf16');
  const meta = {
    numSeqs: contexts.length, numTokens: contexts.length, maxBlocksPerSeq, maxSeqlenQ: 1, maxSeqlenK: Math.max(...contexts), isDecode: true,
    cuSeqlensQ: be.fromI32([contexts.length + 1], Int32Array.from({ length: contexts.length + 1 }, (_, i) => i)),
    contextLens: be.fromI32([contexts.length], Int32Array.from(contexts)),
    blockTables: be.fromI32([contexts.length, maxBlocksPerSeq], tables),
  };
  const params = { numHeads, numKvHeads, headDim: D, blockSize, scale: 1 / Math.sqrt(D), slidingWindow: null, logitSoftcap: null, alibiSlopes: null };
  // sampling over a vocab of 32003
  const V = 32003;
  const logits = be.fromF32([SAMPLING.length, V], uniform(SAMPLING.length * V, 8));
  const rows: DeviceSampleRow[] = SAMPLING.map((init, i) => ({ logitsRow: SAMPLING.length - 1 - i, state: createSamplingState(makeSamplingParams({ ...init, seed: 1000 + i }), [3, 5, 7, 11], [13, 3]) }));
  const sampler = be.createSampler(rows.length, V);

  be.rmsNorm(normOut, x, weight, 1e-5, T, residual);
  be.attention(attnOut, qkv, cache, meta, params);
  be.attention(attnOut, qkv, cache, meta, params); // again right behind itself: the split kernels follow the combine
  const sampled = await sampler.sample(logits, rows);
  write('rmsnorm-out', await be.downloadF32(normOut));
  write('rmsnorm-residual', await be.downloadF32(residual));
  write('attention-decode', await be.downloadF32(attnOut));
  sampler.dispose();
  return sampled.map((s) => ({ tokenId: s.tokenId, logprob: Number.isNaN(s.logprob) ? null : s.logprob, topLogprobs: s.topLogprobs }));
}

async function runFixture(name: string): Promise<{ tokenIds: number[][]; numCapturedGraphs: number; pdlActive: boolean }> {
  const g = loadGolden(name);
  const be = CudaBackend.create();
  try {
    const model = loadModel(g.dir, be);
    const runner = new ModelRunner(be, model.spec, model.weights, { numBlocks: 64, blockSize: 16, maxModelLen: 256, maxNumBatchedTokens: 256, maxNumSeqs: 8, enableCudaGraphs: true });
    const prompts = g.cases.map((c) => c.promptIds);
    const res = await simpleGenerate(runner, prompts, { temperature: 0, maxTokens: 16, ignoreEos: true, keepLogits: true });
    const rowsOf = res.stepLogits!.flat();
    const all = new Float32Array(rowsOf.reduce((n, row) => n + row.length, 0));
    let at = 0;
    for (const row of rowsOf) { all.set(row, at); at += row.length; }
    write(`decode-${name}`, all);
    const out = { tokenIds: res.tokenIds, numCapturedGraphs: runner.numCapturedGraphs, pdlActive: be.kernels.module.pdlActive };
    runner.dispose();
    return out;
  } finally {
    be.dispose();
  }
}

const be = CudaBackend.create();
let result: PdlChildMeta;
try {
  const sampling = await runOps(be);
  result = { pdlActive: be.kernels.module.pdlActive, device: be.props.name, computeCapability: be.props.computeCapability, sampling, fixtures: {} };
} finally {
  be.dispose();
}
for (const name of FIXTURES) {
  const { pdlActive, ...f } = await runFixture(name);
  result.fixtures[name] = f;
  result.pdlActive &&= pdlActive;
}
writeFileSync(join(dir, 'meta.json'), JSON.stringify(result));
