/**
 * Quantized linears on CUDA (issue 6) against the CPU backend's quantized `linear` (the reference) on fresh
 * random inputs (PEREGRINE_TEST_SEED to replay): FP8 per-tensor / per-channel weights with static and dynamic
 * activation scales, INT8 per channel (and grouped), INT4 group 128 symmetric and asymmetric; M = 1, 7, 64,
 * odd and 16-multiple N, K a multiple of 128; every path (the decode GEMV qgemv, the older tensor-core FP8 GEMV
 * and INT GEMV, cuBLASLt FP8 with and without outer-vector scales, dequantized tiles + half GEMM) forced where
 * it is not the default; the decode GEMV on odd shapes (1..8 tokens, many tiles per block, fewer K steps than
 * warps) with x quantized in the kernel or handed over (`xq`); graph replay; and the demo model's perplexity
 * from quantized checkpoints, CUDA against CPU.
 * Without a CUDA device the suite skips.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DType, Fp8Activations, QuantizedWeight } from '../../src/backends/backend.js';
import { CpuBackend, cpuData } from '../../src/backends/cpu/cpu-backend.js';
import { FP8_MIN_ACTIVATION_SCALE } from '../../src/weights/quant/fp8.js';
import { disposeQuant, forceFp8Scaling, fp8TensorActivations, forceQuantPath, quantizeFp8Activations, quantPathFor, type QuantPath } from '../../src/backends/cuda/cuda-quant.js';
import { quantFastPolicy } from '../../src/backends/cuda/cuda-quant-gemv.js';
import { igemmPolicy } from '../../src/backends/cuda/cuda-quant-igemm.js';
import type { Backend } from '../../src/backends/backend.js';
import { computePerplexity } from '../../src/bench/perplexity.js';
import { isPeregrineError } from '../../src/errors.js';
import { loadModel } from '../../src/models/load-model.js';
import { ModelRunner } from '../../src/runner/model-runner.js';
import { Tokenizer } from '../../src/tokenizer/tokenizer.js';
import { buildQuantizedCheckpoint } from '../../src/weights/quant/build.js';
import { freeQuantWeight, uploadQuantWeight } from '../../src/weights/quant/load.js';
import { quantizeWeight, type QuantizeOptions } from '../../src/weights/quant/quantize.js';
import { Harness, openCuda, SEED } from './cuda-harness.js';

/** relative L2 error: the output's own rounding plus f32 (or FP8 tensor-core) accumulation */
const TOL_OUT: Record<'f32' | 'bf16' | 'f16', number> = { f32: 1e-3, bf16: 1e-2, f16: 4e-3 };
/** the dequantize path also rounds weights (and FP8 activations) to the activation dtype: ~2^-9 rms for bf16 */
const TOL_DEQUANT: Record<'bf16' | 'f16', number> = { bf16: 6e-3, f16: 1e-3 };
const MAX_REL_PPL_DIFF = 0.02;

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const DEMO = join(ROOT, 'models', 'demo');
const WINDOW = 128;
const NUM_WINDOWS = 4;

interface WeightSpec extends QuantizeOptions {
  /** fp8 static activation scale; absent = dynamic per token */
  readonly inputScale?: number;
}

interface Case {
  readonly w: WeightSpec;
  readonly M: number;
  readonly N: number;
  readonly K: number;
  readonly act?: 'bf16' | 'f16';
  readonly out?: 'f32' | 'bf16' | 'f16';
  readonly bias?: DType;
  readonly path?: QuantPath;
  /** the path the backend should pick by itself */
  readonly expect?: QuantPath;
  /** fp8: hand x over already quantized (Backend.linear's xq), as the fused norm does */
  readonly xq?: boolean;
}

function describeW(w: WeightSpec): string {
  if (w.kind === 'fp8') return `fp8/${w.fp8Scale ?? 'tensor'}/${w.inputScale === undefined ? 'dynamic' : 'static'}`;
  if (w.kind === 'int8') return `int8/g${w.groupSize ?? 'K'}`;
  return `int4/g${w.groupSize ?? 128}/${w.symmetric === false ? 'asym' : 'sym'}`;
}

const { gpu, reason } = openCuda();

if (!gpu) {
  test('CUDA quantized linear', (t) => t.skip(`no CUDA device: ${reason}`));
} else {
  const h = new Harness(gpu, SEED);
  after(() => {
    h.dispose();
    disposeQuant(gpu);
    gpu.dispose();
  });
  const [ccMajor, ccMinor] = gpu.props.computeCapability;
  const fp8Cores = ccMajor * 10 + ccMinor >= 89;

  /** The same quantized weight on both backends, from fresh random f32 values. */
  const makeWeight = (spec: WeightSpec, N: number, K: number): { cpu: QuantizedWeight; gpu: QuantizedWeight } => {
    const host0 = quantizeWeight(h.uniform(N * K, 0.05), N, K, spec);
    const host = spec.inputScale === undefined ? host0 : { ...host0, inputScale: spec.inputScale };
    return { cpu: uploadQuantWeight(host, h.cpu), gpu: uploadQuantWeight(host, gpu) };
  };

  const run = async (c: Case): Promise<void> => {
    const act = c.act ?? 'bf16';
    const outDtype = c.out ?? act;
    const w = makeWeight(c.w, c.N, c.K);
    try {
      const x = h.rand([c.M, c.K], act, 2);
      const out = h.output([c.M, c.N], outDtype);
      const bias = c.bias ? h.rand([c.N], c.bias) : null;
      const label = `${describeW(c.w)} ${act}->${outDtype} M=${c.M} N=${c.N} K=${c.K}${c.bias ? ` bias ${c.bias}` : ''}${c.xq ? ' xq' : ''} path ${c.path ?? 'auto'}`;
      if (c.expect) assert.equal(quantPathFor(gpu, w.gpu, c.M, x.gpu, c.xq ?? false), c.expect, `${label}: default path`);
      h.cpu.linear(out.cpu, x.cpu, w.cpu, bias?.cpu ?? null, c.M);
      let xq: Fp8Activations | null = null;
      if (c.xq) {
        xq = { codes: gpu.empty([c.M, c.K / 4], 'i32'), scales: gpu.empty([c.M], 'f32') };
        quantizeFp8Activations(gpu, xq, x.gpu, c.M, w.gpu.inputScale);
      }
      forceQuantPath(c.path ?? null);
      try {
        gpu.linear(out.gpu, x.gpu, w.gpu, bias?.gpu ?? null, c.M, xq);
      } finally {
        forceQuantPath(null);
        if (xq) {
          gpu.free(xq.codes);
          gpu.free(xq.scales);
        }
      }
      const path = c.path ?? quantPathFor(gpu, w.gpu, c.M, x.gpu, c.xq ?? false);
      await h.expectClose(out, label, undefined, TOL_OUT[outDtype] + (path === 'dequant' || path === 'igemm' ? TOL_DEQUANT[act] : 0));
    } finally {
      freeQuantWeight(w.gpu, gpu);
    }
  };

  const fp8Specs: WeightSpec[] = [
    { kind: 'fp8', fp8Scale: 'tensor' },
    { kind: 'fp8', fp8Scale: 'channel' },
    { kind: 'fp8', fp8Scale: 'tensor', inputScale: 2 / 448 },
    { kind: 'fp8', fp8Scale: 'channel', inputScale: 1.5 / 448 },
  ];
  const intSpecs: WeightSpec[] = [
    { kind: 'int8' },
    { kind: 'int8', groupSize: 128 },
    { kind: 'int4', groupSize: 128, symmetric: true },
    { kind: 'int4', groupSize: 128, symmetric: false },
  ];

  describe(`CUDA quantized linear on ${gpu.props.name} (sm_${ccMajor}${ccMinor}, seed ${SEED})`, () => {
    test('fp8: per-tensor / per-channel weights, static / dynamic activations, M = 1, 7, 64, default paths', { skip: !fp8Cores && 'FP8 tensor cores need sm_89+' }, async () => {
      for (const w of fp8Specs) {
        for (const [N, K] of [[333, 256], [512, 640]] as const) {
          await run({ w, M: 1, N, K, expect: 'qgemv' });
          await run({ w, M: 7, N, K, expect: 'qgemv', bias: 'bf16' });
          await run({ w, M: 64, N, K, expect: 'cublas' });
          await run({ w, M: 64, N, K, xq: true });
        }
      }
    });

    test('fp8: f32 / f16 outputs, biases, 16 tokens, a 4096-wide row', { skip: !fp8Cores && 'FP8 tensor cores need sm_89+' }, async () => {
      const [tensor, channel] = fp8Specs as [WeightSpec, WeightSpec];
      await run({ w: tensor, M: 1, N: 4099, K: 4096, out: 'f32', expect: 'qgemv' });
      // quantized x (handed over, or past 2 tokens quantized first): the decode GEMV up to 8192 rows, the older GEMV above
      await run({ w: tensor, M: 1, N: 8193, K: 4096, xq: true, expect: 'mma' });
      await run({ w: tensor, M: 1, N: 6144, K: 4096, xq: true, expect: 'qgemv' });
      await run({ w: channel, M: 5, N: 8193, K: 512, expect: 'mma', bias: 'bf16' });
      await run({ w: channel, M: 5, N: 8192, K: 512, expect: 'qgemv', bias: 'bf16' });
      await run({ w: channel, M: 16, N: 1000, K: 512, bias: 'f32', out: 'f32', expect: 'cublas' });
      await run({ w: channel, M: 64, N: 1000, K: 512, bias: 'f32', out: 'f32' });
      await run({ w: tensor, M: 7, N: 257, K: 384, act: 'f16' });
      await run({ w: channel, M: 64, N: 256, K: 384, act: 'f16', bias: 'f16' });
    });

    test('fp8 forced paths: the older GEMV, cuBLASLt at few tokens, unscaled products + epilogue, dequantize (the pre-sm_89 path)', async () => {
      for (const w of fp8Specs) {
        if (fp8Cores) {
          await run({ w, M: 1, N: 333, K: 640, path: 'mma' });
          await run({ w, M: 7, N: 333, K: 256, path: 'mma', xq: true, bias: 'f32' });
          await run({ w, M: 7, N: 512, K: 256, path: 'cublas' });
          forceFp8Scaling('none');
          try {
            await run({ w, M: 64, N: 512, K: 256, path: 'cublas', bias: 'bf16' });
          } finally {
            forceFp8Scaling(null);
          }
        }
        await run({ w, M: 7, N: 333, K: 256, path: 'dequant' });
        await run({ w, M: 64, N: 512, K: 256, path: 'dequant', out: 'f32' });
      }
    });

    test('fp8: cuBLASLt outer-vector scaling runs where the library has it (else the epilogue path serves)', { skip: !fp8Cores && 'FP8 tensor cores need sm_89+' }, async (t) => {
      forceFp8Scaling('outer-vec');
      try {
        await run({ w: fp8Specs[1]!, M: 64, N: 512, K: 256, path: 'cublas' });
      } catch (e) {
        if (isPeregrineError(e) && e.code === 'PGN_ERR_UNSUPPORTED_FEATURE') t.diagnostic(`outer-vector FP8 scaling unavailable: ${e.message}`);
        else throw e;
      } finally {
        forceFp8Scaling(null);
      }
    });

    test('fp8 one activation scale per tensor (PEREGRINE_FP8_TENSOR_ACT): the static-scale result with scale = amax / 448, through cuBLASLt scalar scales', { skip: !fp8Cores && 'FP8 tensor cores need sm_89+' }, async () => {
      fp8TensorActivations.enabled = true;
      forceFp8Scaling('scalar'); // a refusal throws naming cuBLASLt's answer instead of silently taking the per-token path
      try {
        for (const [M, N, K, bias] of [[64, 512, 256, null], [200, 1024, 640, 'bf16'], [33, 4096, 4096, null]] as const) {
          const host = quantizeWeight(h.uniform(N * K, 0.05), N, K, { kind: 'fp8', fp8Scale: 'tensor' });
          const x = h.rand([M, K], 'bf16', 2);
          let amax = 0;
          for (const v of cpuData(x.cpu) as Float32Array) amax = Math.max(amax, Math.abs(v));
          const scale = Math.fround(Math.max(Math.fround(amax / 448), FP8_MIN_ACTIVATION_SCALE));
          const wCpu = uploadQuantWeight({ ...host, inputScale: scale }, h.cpu);
          const wGpu = uploadQuantWeight(host, gpu);
          try {
            const out = h.output([M, N], 'bf16');
            const b = bias ? h.rand([N], bias) : null;
            assert.equal(quantPathFor(gpu, wGpu, M, x.gpu), 'cublas');
            h.cpu.linear(out.cpu, x.cpu, wCpu, b?.cpu ?? null, M);
            gpu.linear(out.gpu, x.gpu, wGpu, b?.gpu ?? null, M);
            await h.expectClose(out, `fp8 tensor activations M=${M} N=${N} K=${K}`, undefined, TOL_OUT.bf16);
            // a static input scale takes the same scalar path
            const wStatic = uploadQuantWeight({ ...host, inputScale: scale }, gpu);
            const out2 = h.output([M, N], 'bf16');
            h.cpu.linear(out2.cpu, x.cpu, wCpu, b?.cpu ?? null, M);
            gpu.linear(out2.gpu, x.gpu, wStatic, b?.gpu ?? null, M);
            await h.expectClose(out2, `fp8 static scale, scalar path M=${M} N=${N} K=${K}`, undefined, TOL_OUT.bf16);
            freeQuantWeight(wStatic, gpu);
          } finally {
            freeQuantWeight(wGpu, gpu);
          }
        }
      } finally {
        fp8TensorActivations.enabled = false;
        forceFp8Scaling(null);
      }
    });

    test('int8 / int4 weight-only: M = 1, 7, 64 by default, and the older GEMV forced up to 8 tokens', async () => {
      for (const w of intSpecs) {
        for (const [N, K] of [[333, 256], [512, 640]] as const) {
          await run({ w, M: 1, N, K, expect: 'qgemv' });
          await run({ w, M: 7, N, K, expect: 'qgemv', bias: 'bf16' });
          await run({ w, M: 64, N, K, expect: 'dequant' });
          await run({ w, M: 7, N, K, path: 'gemv', bias: 'f32', out: 'f32' });
        }
      }
      await run({ w: intSpecs[3]!, M: 1, N: 4097, K: 4096, out: 'f32' });
      await run({ w: intSpecs[0]!, M: 3, N: 1001, K: 1024, act: 'f16' });
      await run({ w: intSpecs[2]!, M: 64, N: 257, K: 384, act: 'f16', out: 'f32', bias: 'f16' });
      // the dequantizing path a thread per 32-bit word, where 16-byte units do not fit (K, or a group, not whole units)
      const oddGroups: [WeightSpec, number][] = [[{ kind: 'int8', groupSize: 8 }, 72], [{ kind: 'int8', groupSize: 24 }, 96], [{ kind: 'int4', groupSize: 16, symmetric: false }, 48]];
      for (const [w, K] of oddGroups) await run({ w, M: 64, N: 65, K, path: 'dequant' });
    });

    test('tiled int GEMM (igemm, PEREGRINE_INT_GEMM=1): tokens past one 64-token tile, odd N, groups of 64 / 128 / a row, biases, f16', async () => {
      for (const w of [...intSpecs, { kind: 'int4', groupSize: 64, symmetric: false } as WeightSpec]) {
        for (const [M, N, K] of [[9, 333, 256], [64, 128, 640], [130, 257, 384]] as const) {
          if (K % (w.groupSize ?? K) !== 0) continue;
          await run({ w, M, N, K, path: 'igemm', bias: M % 2 ? 'bf16' : undefined });
        }
        await run({ w, M: 77, N: 200, K: 512, act: 'f16', out: 'f32', bias: 'f32', path: 'igemm' });
      }
      const saved = igemmPolicy.enabled;
      igemmPolicy.enabled = true;
      try {
        await run({ w: intSpecs[2]!, M: 64, N: 256, K: 512, expect: 'igemm' });
        await run({ w: intSpecs[3]!, M: 8, N: 256, K: 512, expect: 'qgemv' });
        await run({ w: intSpecs[0]!, M: igemmPolicy.maxM + 1, N: 64, K: 256, expect: 'dequant' });
      } finally {
        igemmPolicy.enabled = saved;
      }
    });

    test('decode GEMV (qgemv): 1..8 tokens, odd N, K from 1 step to more steps than warps, many tiles per block', async () => {
      const kinds: WeightSpec[] = [
        ...(fp8Cores ? fp8Specs : []),
        { kind: 'int8' },
        { kind: 'int8', groupSize: 64 },
        { kind: 'int4', groupSize: 128, symmetric: true },
        { kind: 'int4', groupSize: 256, symmetric: false },
      ];
      // [M, N, K]: K = 1 step (fp8/int8 64, int4 128) leaves 7 warps idle; 640 / 1152: steps not a multiple of 8
      const shapes = [[1, 1, 256], [2, 17, 1152], [3, 1031, 640], [5, 16, 512], [8, 333, 256], [1, 4099, 4096], [8, 97, 2304]] as const;
      for (const w of kinds) {
        const step = w.kind === 'int4' ? 128 : 64;
        const gs = w.kind === 'fp8' ? step : w.groupSize ?? 128;
        await run({ w, M: 4, N: 45, K: Math.max(step, gs), path: 'qgemv' });
        for (const [M, N, K] of shapes) {
          if (K % gs !== 0) continue;
          await run({ w, M, N, K, path: 'qgemv', bias: M % 2 ? 'bf16' : undefined });
          if (w.kind === 'fp8') await run({ w, M, N, K, path: 'qgemv', xq: true });
        }
        await run({ w, M: 6, N: 301, K: 384 + (w.kind === 'int4' || gs > 128 ? 128 : 0), act: 'f16', out: 'f32', bias: 'f16', path: 'qgemv' });
      }
      // more tiles than resident blocks: every block loops over tiles, the copy ring runs across them
      const many = gpu.props.numSMs * 3 * 16 * 2 + 5;
      for (const w of [...(fp8Cores ? [fp8Specs[1]!] : []), intSpecs[3]!]) await run({ w, M: 8, N: many, K: 256, path: 'qgemv' });
      // int x of 8 tokens x 14336 does not fit one block: the tokens run in chunks
      for (const w of [intSpecs[0]!, intSpecs[3]!]) await run({ w, M: 8, N: 33, K: 14336, path: 'qgemv', expect: 'qgemv' });
      // fp8 rows of K >= 8192: the deeper ring (qgemv_fp8*_s10)
      if (fp8Cores) {
        for (const M of [1, 3, 8]) {
          await run({ w: fp8Specs[1]!, M, N: 77, K: 8192, path: 'qgemv', bias: 'bf16' });
          await run({ w: fp8Specs[0]!, M, N: 77, K: 14336, path: 'qgemv', xq: true });
        }
      }
    });

    test('decode GEMV policy: PEREGRINE_QGEMV_MAX_M and the switch back to the older kernels', () => {
      const w = makeWeight(intSpecs[2]!, 64, 256);
      const saved = { ...quantFastPolicy };
      try {
        const x = h.rand([8, 256], 'bf16');
        assert.equal(quantPathFor(gpu, w.gpu, 8, x.gpu), 'qgemv');
        quantFastPolicy.maxM = 4;
        assert.equal(quantPathFor(gpu, w.gpu, 4, x.gpu), 'qgemv');
        assert.equal(quantPathFor(gpu, w.gpu, 5, x.gpu), 'gemv');
        quantFastPolicy.qgemv = false;
        assert.equal(quantPathFor(gpu, w.gpu, 1, x.gpu), 'gemv');
        assert.equal(quantPathFor(gpu, w.gpu, 9, x.gpu), 'dequant');
      } finally {
        Object.assign(quantFastPolicy, saved);
        freeQuantWeight(w.gpu, gpu);
      }
    });

    test('captured in a CUDA graph, replays read the new inputs (scratch addresses stay put)', async () => {
      const specs = fp8Cores ? [fp8Specs[0]!, intSpecs[3]!] : [intSpecs[3]!];
      for (const spec of specs) {
        const w = makeWeight(spec, 512, 256);
        try {
          const x = h.rand([1, 256], 'bf16', 2);
          const out = h.output([1, 512], 'bf16');
          gpu.linear(out.gpu, x.gpu, w.gpu, null, 1); // eager first: lazy setup stays out of the graph
          await gpu.synchronize();
          gpu.beginCapture();
          gpu.linear(out.gpu, x.gpu, w.gpu, null, 1);
          const graph = gpu.endCapture();
          try {
            for (let r = 0; r < 2; r++) {
              const x2 = h.rand([1, 256], 'bf16', 2);
              gpu.copy(x.gpu, x2.gpu, 1);
              h.cpu.copy(x.cpu, x2.cpu, 1);
              gpu.replay(graph);
              h.cpu.linear(out.cpu, x.cpu, w.cpu, null, 1);
              await h.expectClose(out, `${describeW(spec)} graph replay ${r}`);
            }
          } finally {
            graph.dispose();
          }
        } finally {
          freeQuantWeight(w.gpu, gpu);
        }
      }
    });

    test('bad calls: a path that cannot run, a mis-shaped input, codes of the wrong size', () => {
      const w = makeWeight(intSpecs[2]!, 64, 256);
      try {
        const x = h.rand([2, 256], 'bf16');
        const out = h.output([2, 64], 'bf16');
        forceQuantPath('mma');
        try {
          assert.throws(() => gpu.linear(out.gpu, x.gpu, w.gpu, null, 2), (e: unknown) => isPeregrineError(e) && e.code === 'PGN_ERR_UNSUPPORTED_FEATURE' && /'mma'.*int4 \[64, 256\]/.test(e.message));
        } finally {
          forceQuantPath(null);
        }
        const xBad = h.rand([2, 128], 'bf16');
        assert.throws(() => gpu.linear(out.gpu, xBad.gpu, w.gpu, null, 2), (e: unknown) => isPeregrineError(e) && /x has rows of 128 elements, expected 256/.test(e.message));
        const wrong: QuantizedWeight = { ...w.gpu, shape: [128, 256] };
        const out2 = h.output([2, 128], 'bf16');
        assert.throws(() => gpu.linear(out2.gpu, x.gpu, wrong, null, 2), (e: unknown) => isPeregrineError(e) && /qweight of \[128, 256\] must be i32 \[128, 32\]/.test(e.message));
      } finally {
        freeQuantWeight(w.gpu, gpu);
      }
    });

    test(`demo model perplexity from quantized checkpoints: CUDA within ${100 * MAX_REL_PPL_DIFF}% of CPU`, async (t) => {
      const tok = await Tokenizer.load(DEMO);
      const ids = tok.encode(readFileSync(join(ROOT, 'tools', 'demo-model', 'heldout.txt'), 'utf8'));
      const tmp = mkdtempSync(join(tmpdir(), 'pgn-cuda-quant-'));
      try {
        for (const kind of ['fp8', 'int8', 'int4'] as const) {
          const dir = join(tmp, kind);
          await buildQuantizedCheckpoint({ modelDir: DEMO, outDir: dir, kind, jobs: 1 });
          const cpu = await ppl(dir, new CpuBackend(), ids);
          const cuda = await ppl(dir, gpu, ids);
          const rel = cuda / cpu - 1;
          t.diagnostic(`${kind}: ppl CUDA ${cuda.toFixed(4)} vs CPU ${cpu.toFixed(4)} (${(100 * rel).toFixed(3)}%)`);
          assert.ok(Math.abs(rel) < MAX_REL_PPL_DIFF, `${kind}: ppl CUDA ${cuda.toFixed(4)} vs CPU ${cpu.toFixed(4)} (${(100 * rel).toFixed(2)}%)`);
        }
      } finally {
        rmSync(tmp, { recursive: true, force: true });
      }
    });
  });
}

async function ppl(dir: string, backend: Backend, ids: number[]): Promise<number> {
  const m = loadModel(dir, backend);
  assert.ok(m.quant, `${dir} loads as a quantized checkpoint`);
  const runner = new ModelRunner(backend, m.spec, m.weights, { numBlocks: WINDOW / 16, blockSize: 16, maxModelLen: WINDOW, maxNumBatchedTokens: WINDOW, maxNumSeqs: 1, maxNumLogits: WINDOW });
  try {
    return (await computePerplexity(runner, ids, WINDOW, NUM_WINDOWS)).ppl;
  } finally {
    runner.dispose();
  }
}

