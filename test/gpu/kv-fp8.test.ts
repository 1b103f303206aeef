/**
 * The FP8 (E4M3) KV cache on CUDA against the CPU reference: ropeWriteKv's codes, paged attention
 * over an fp8 cache (decode split along the keys into several split counts, eager and graph
 * replays, 1/2/4/8 heads a block; prefill and chunked prefill with context in the
 * cache, the generic kernel), head sizes 64/128/256 and others, GQA/MQA; a model fixture with the
 * fp8 cache; twice the blocks for the same memory. Without a CUDA device the suite skips.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { defaultNumKvBlocks } from '../../src/api/llm-options.js';
import type { LayerKvCache } from '../../src/backends/backend.js';
import { CpuBackend, cpuData } from '../../src/backends/cpu/cpu-backend.js';
import { SHAPES } from '../../src/bench/shapes.js';
import { parseModelConfig } from '../../src/models/config.js';
import { loadModel } from '../../src/models/load-model.js';
import { ModelRunner, type RunnerConfig } from '../../src/runner/model-runner.js';
import { simpleGenerate } from '../../src/runner/simple-generate.js';
import { encodeE4M3 } from '../../src/weights/quant/fp8.js';
import { chunkedPrefillLogits } from '../helpers/chunked-prefill.js';
import { loadGolden } from '../helpers/golden.js';
import { ATTENTION_TOL, checkGraphRuns, pagedBatch, type AttentionCase } from './attention-cases.js';
import { ropeVec } from '../../src/backends/cuda/cuda-ops.js';
import { Harness, openCuda, SEED } from './cuda-harness.js';

const { gpu, reason } = openCuda();

/** E4M3 codes of x / scale, 4 to an i32 word */
function quantizeRows(x: Float32Array, scale: number): Int32Array {
  const bytes = Uint8Array.from(x, (v) => encodeE4M3(v / scale));
  return new Int32Array(bytes.buffer);
}

if (!gpu) {
  test('CUDA fp8 KV cache', (t) => t.skip(`no CUDA device: ${reason}`));
} else {
  const h = new Harness(gpu, SEED + 7);
  after(() => {
    h.dispose();
    gpu.dispose();
  });

  /** the same fp8 cache on both backends (codes uploaded as words) */
  function fp8Cache(rows: number, kvWidth: number, kScale: number, vScale: number): { cpu: LayerKvCache; gpu: LayerKvCache; free: () => void } {
    const k = quantizeRows(h.uniform(rows * kvWidth, 3), kScale);
    const v = quantizeRows(h.uniform(rows * kvWidth, 3), vScale);
    const shape = [rows, kvWidth / 4];
    const gk = gpu!.fromI32(shape, k), gv = gpu!.fromI32(shape, v);
    return {
      cpu: { k: h.cpu.fromI32(shape, k), v: h.cpu.fromI32(shape, v), dtype: 'fp8', kScale, vScale },
      gpu: { k: gk, v: gv, dtype: 'fp8', kScale, vScale },
      free: () => { gpu!.free(gk); gpu!.free(gv); },
    };
  }

  async function check(c: AttentionCase): Promise<void> {
    const { headDim, numHeads, numKvHeads, seqs } = c;
    const dtype = c.dtype ?? 'bf16';
    const blockSize = 16;
    const batch = pagedBatch(h, c, blockSize);
    const { numBlocks, numTokens } = batch;
    const cache = fp8Cache(numBlocks * blockSize, numKvHeads * headDim, 0.0125, 0.025);
    const qkv = h.rand([numTokens, (numHeads + 2 * numKvHeads) * headDim], dtype);
    const out = h.output([numTokens, numHeads * headDim], dtype);
    const params = { numHeads, numKvHeads, headDim, blockSize, scale: 1 / Math.sqrt(headDim), slidingWindow: c.slidingWindow ?? null };
    h.cpu.attention(out.cpu, qkv.cpu, cache.cpu, batch.meta((p) => p.cpu), params);
    const gpuMeta = batch.meta((p) => p.gpu);
    const launch = () => gpu!.attention(out.gpu, qkv.gpu, cache.gpu, gpuMeta, params);
    const what = `fp8-KV attention ${dtype} D=${headDim} heads ${numHeads}/${numKvHeads} seqs ${JSON.stringify(seqs)}${c.maxSeqlenK ? ` maxSeqlenK ${c.maxSeqlenK}` : ''}`;
    const tol = ATTENTION_TOL[dtype];
    try {
      launch();
      await h.expectClose(out, what, undefined, tol);
      if (!c.replays) return;
      const runs = ['eager again', 'graph replay', 'graph replay again'];
      await checkGraphRuns(gpu!, launch, out, runs, (run) => h.expectClose(out, `${what} (${run})`, undefined, tol));
    } finally {
      cache.free();
    }
  }

  describe(`CUDA fp8 KV cache on ${gpu.props.name} (seed ${SEED + 7})`, () => {
    test('decode over an fp8 cache, split along long contexts, GQA/MQA', async () => {
      const seqs = [[1, 1], [1, 17], [1, 300], [1, 2100], [1, 999]] as const;
      for (const headDim of [64, 128, 256]) {
        for (const [numHeads, numKvHeads] of [[4, 4], [32, 8], [12, 1], [8, 2], [8, 4]] as const) await check({ headDim, numHeads, numKvHeads, seqs });
      }
      await check({ headDim: 128, numHeads: 32, numKvHeads: 8, seqs: [[1, 4000]], dtype: 'f16' });
      await check({ headDim: 80, numHeads: 8, numKvHeads: 2, seqs, slidingWindow: 100 });
      await check({ headDim: 96, numHeads: 8, numKvHeads: 2, seqs });
      // a mixed step: leading decodes on the decode kernel, the rest on the prefill kernel
      await check({ headDim: 128, numHeads: 32, numKvHeads: 8, seqs: [[1, 20], [1, 1300], [37, 37], [1, 999], [70, 150]] });
    });

    test('split decode over an fp8 cache: several split counts, eager and graph replays', async () => {
      await check({ headDim: 128, numHeads: 32, numKvHeads: 8, seqs: [[1, 150]], maxSeqlenK: 100, replays: true });
      await check({ headDim: 128, numHeads: 32, numKvHeads: 8, seqs: [[1, 5000], [1, 3]], maxSeqlenK: 8192, replays: true });
      await check({ headDim: 64, numHeads: 12, numKvHeads: 1, seqs: [[1, 3000]], maxSeqlenK: 1 << 16, replays: true });
      await check({ headDim: 256, numHeads: 4, numKvHeads: 2, seqs: [[1, 700], [1, 1], [1, 90]], maxSeqlenK: 4096, dtype: 'f16', replays: true });
    });

    test('prefill and chunked prefill (context in the cache) over an fp8 cache', async () => {
      const seqs = [[37, 37], [70, 150], [1, 20], [130, 200]] as const;
      for (const headDim of [64, 128, 256]) {
        for (const [numHeads, numKvHeads] of [[4, 4], [8, 2], [6, 1]] as const) await check({ headDim, numHeads, numKvHeads, seqs });
      }
      await check({ headDim: 128, numHeads: 8, numKvHeads: 2, seqs, dtype: 'f16' });
      // 512+ queries: the 8-warp kernel
      await check({ headDim: 128, numHeads: 4, numKvHeads: 2, seqs: [[600, 900], [3, 3]] });
      await check({ headDim: 96, numHeads: 4, numKvHeads: 2, seqs: [[90, 90], [65, 210]], slidingWindow: 40 });
    });

    test('other head sizes (generic kernel) over an fp8 cache', async () => {
      for (const headDim of [16, 40]) {
        await check({ headDim, numHeads: 4, numKvHeads: 2, seqs: [[37, 37], [20, 90], [1, 20]] });
        await check({ headDim, numHeads: 6, numKvHeads: 1, seqs: [[1, 1], [1, 300], [1, 77]] });
      }
    });

    test('ropeWriteKv writes the codes the CPU reference writes', async () => {
      const numHeads = 8, numKvHeads = 2, headDim = 128, T = 40, rows = 64, kvWidth = numKvHeads * headDim;
      const qkv = h.rand([T, (numHeads + 2 * numKvHeads) * headDim], 'bf16', 4);
      const qkvSaved = h.rand([T, (numHeads + 2 * numKvHeads) * headDim], 'bf16');
      gpu!.copy(qkvSaved.gpu, qkv.gpu, T);
      const table = new Float32Array(512 * headDim);
      for (let p = 0; p < 512; p++) {
        for (let j = 0; j < headDim / 2; j++) {
          const a = p * 10000 ** (-2 * j / headDim);
          table[p * headDim + j] = Math.cos(a);
          table[p * headDim + headDim / 2 + j] = Math.sin(a);
        }
      }
      const cosSin = h.fromF32([512, headDim], table, 'f32');
      const positions = h.ints([T], Int32Array.from({ length: T }, (_, i) => 3 * i + 1));
      const slots = h.ints([T], Int32Array.from({ length: T }, (_, i) => (i === 5 ? -1 : (i * 7) % rows)));
      const cache = fp8Cache(rows, kvWidth, 0.02, 0.01);
      const p = { numHeads, numKvHeads, headDim, rotaryDim: headDim, style: 'neox' as const };
      h.cpu.ropeWriteKv(qkv.cpu, positions.cpu, cosSin.cpu, cache.cpu, slots.cpu, T, p);
      gpu!.ropeWriteKv(qkv.gpu, positions.gpu, cosSin.gpu, cache.gpu, slots.gpu, T, p);
      // the warp-per-head kernel writes the same codes (into a second cache, q rotated from a copy)
      ropeVec.enabled = false;
      const qkv2 = h.rand([T, (numHeads + 2 * numKvHeads) * headDim], 'bf16');
      gpu!.copy(qkv2.gpu, qkvSaved.gpu, T);
      const cache2 = fp8Cache(rows, kvWidth, 0.02, 0.01);
      try {
        gpu!.ropeWriteKv(qkv2.gpu, positions.gpu, cosSin.gpu, cache2.gpu, slots.gpu, T, p);
      } finally {
        ropeVec.enabled = true;
      }
      for (const which of ['k', 'v'] as const) {
        const a: Uint8Array = new Uint8Array((await gpu!.downloadI32(cache.gpu[which])).buffer), b: Uint8Array = new Uint8Array((await gpu!.downloadI32(cache2.gpu[which])).buffer);
        for (let i = 0; i < T; i++) {
          if (i === 5) continue; // slot -1: not written (the two caches' other rows hold their own random codes)
          const r = ((i * 7) % rows) * kvWidth;
          assert.deepEqual(a.subarray(r, r + kvWidth), b.subarray(r, r + kvWidth), `${which}: the two kernels' codes, token ${i}`);
        }
      }
      assert.deepEqual(await gpu!.downloadF32(qkv2.gpu), await gpu!.downloadF32(qkv.gpu), 'the two kernels\' rotated q');
      cache2.free();
      for (const which of ['k', 'v'] as const) {
        const want = new Uint8Array((cpuData(cache.cpu[which]) as Int32Array).buffer);
        const got = new Uint8Array((await gpu!.downloadI32(cache.gpu[which])).buffer);
        // the rotated k is f32 on both sides, up to an ulp (FMA): a code may sit on the other side of a
        // rounding boundary, one step away (adjacent codes of one sign differ by 1)
        let differ = 0, far = 0;
        for (let i = 0; i < want.length; i++) {
          if (got[i] === want[i]) continue;
          differ++;
          if (Math.abs(got[i]! - want[i]!) > 1) far++;
        }
        assert.equal(far, 0, `${which}: ${far} codes differ by more than one step`);
        assert.ok(differ <= want.length * 1e-3, `${which}: ${differ} of ${want.length} codes differ`);
      }
      await h.expectClose(qkv, 'ropeWriteKv (fp8 cache): rotated q');
      cache.free();
    });

    test('a model fixture on CUDA with the fp8 KV cache: near the CPU fp8 path and the CUDA auto path', async () => {
      const g = loadGolden('llama-gqa-llama3');
      const cpu = new CpuBackend();
      const config: RunnerConfig = { numBlocks: 48, blockSize: 16, maxModelLen: 256, maxNumBatchedTokens: 256, maxNumSeqs: 8, maxNumLogits: 256 };
      const mg = loadModel(g.dir, gpu), mc = loadModel(g.dir, cpu);
      const runners = {
        gpuFp8: new ModelRunner(gpu, mg.spec, mg.weights, { ...config, kvCache: { dtype: 'fp8' } }),
        gpuAuto: new ModelRunner(gpu, mg.spec, mg.weights, config),
        cpuFp8: new ModelRunner(cpu, mc.spec, mc.weights, { ...config, kvCache: { dtype: 'fp8' } }),
      };
      const V = mg.spec.vocabSize;
      const c = g.cases[0]!;
      const ids = [...c.promptIds, ...c.greedyIds.slice(0, -1)];
      const rest = ids.length - Math.floor(ids.length / 2);
      const logits = (r: ModelRunner) => chunkedPrefillLogits(r, ids);
      const ref = await logits(runners.cpuFp8);
      let scale = 0;
      for (const x of ref) scale = Math.max(scale, Math.abs(x));
      const relErr = (a: Float32Array) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - ref[i]!)), 0) / scale;
      const gpuFp8 = await logits(runners.gpuFp8), gpuAuto = await logits(runners.gpuAuto);
      assert.equal(gpuFp8.length, rest * V);
      // bf16 activations against f32 (cuda-models allows 4e-2), plus codes flipped by that rounding
      assert.ok(relErr(gpuFp8) < 0.1, `CUDA fp8 vs CPU fp8: ${relErr(gpuFp8)}`);
      assert.ok(relErr(gpuAuto) < 0.2, `CUDA auto vs CPU fp8: ${relErr(gpuAuto)}`);
      // decode steps (CUDA graphs) over the fp8 cache
      const out = await simpleGenerate(runners.gpuFp8, g.cases.map((k) => k.promptIds), { temperature: 0, maxTokens: 12, ignoreEos: true });
      assert.ok(out.tokenIds.every((t) => t.length === 12 && t.every((id) => id >= 0 && id < V)));
      for (const r of Object.values(runners)) r.dispose();
    });

    test('the fp8 cache holds twice the blocks in the same GPU memory', () => {
      const spec = parseModelConfig(SHAPES['llama-3.1-8b']!); // ~2 MiB a bf16 block: no cap reached
      const lim = { blockSize: 16, maxModelLen: 4096, maxNumSeqs: 1024, maxNumBatchedTokens: 256 };
      const auto = defaultNumKvBlocks(gpu, spec, lim, {}), fp8 = defaultNumKvBlocks(gpu, spec, lim, { kvCacheDtype: 'fp8' });
      assert.ok(Math.abs(fp8 - 2 * auto) <= 1, `auto ${auto} blocks, fp8 ${fp8}`);
    });
  });
}

