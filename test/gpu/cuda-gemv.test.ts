/**
 * The decode-shaped GEMV (kernels/gemv.cu via cuda-gemv.ts) against the CPU reference
 * `linear` on fresh random inputs (PEREGRINE_TEST_SEED to replay one): M = 1..16, odd N,
 * K multiples of 8 (with a partial last 32-k chunk), bias or not, bf16/f16, operand-dtype
 * and f32 out; every launch plan; replay inside a CUDA graph; which linears it takes.
 * The plan and the policy are pure functions checked without a GPU; the rest skips without one.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { DType } from '../../src/backends/backend.js';
import { gemv, gemvPlan, gemvPlanName, gemvPlans, gemvPolicy, gemvSuits, gemvTakes, type GemvContext } from '../../src/backends/cuda/cuda-gemv.js';
import { ringGemvSuits } from '../../src/backends/cuda/cuda-ring-gemv.js';
import type { CudaTensor } from '../../src/backends/cuda/cuda-tensor.js';
import { Harness, openCuda, SEED, TOL, type Pair } from './cuda-harness.js';

/** relative L2 error for f32 out: only the summation order differs from the f64 reference */
const F32_TOL = 1e-4;

/** Runs `fn` with the policy changed by `patch`, then puts it back. */
async function withPolicy(patch: Partial<typeof gemvPolicy>, fn: () => unknown): Promise<void> {
  const before = { ...gemvPolicy };
  Object.assign(gemvPolicy, patch);
  try {
    await fn();
  } finally {
    Object.assign(gemvPolicy, before);
  }
}

test('gemvPlan: 8 warps split K, fewer when K gives them less than one 4-chunk step each; pipelined up to 8 rows (PEREGRINE_GEMV_PIPE=0: not)', async () => {
  await withPolicy({ pipe: true }, () => {
    assert.deepEqual(gemvPlan(4096), { warps: 8, unroll: 4, pipe: true });
    assert.deepEqual(gemvPlan(14336, 8), { warps: 8, unroll: 4, pipe: true });
    assert.deepEqual(gemvPlan(4096, 9), { warps: 8, unroll: 4 }); // no pipelined kernels for 16 rows
    assert.deepEqual(gemvPlan(256), { warps: 2, unroll: 4, pipe: true }); // 8 chunks: 4 per warp
    assert.deepEqual(gemvPlan(64), { warps: 1, unroll: 4, pipe: true });
  });
  await withPolicy({ pipe: false }, () => {
    assert.deepEqual(gemvPlan(4096), { warps: 8, unroll: 4 });
  });
});

test('gemvTakes: up to 8 rows, weights up to 64 MiB or f32 out; PEREGRINE_GEMV=0 / all; K % 8', async () => {
  await withPolicy({ enabled: true, all: false, maxRows: 8 }, () => {
    assert.equal(gemvTakes(1, 4096, 4096, 'bf16'), true, 'o_proj');
    assert.equal(gemvTakes(8, 6144, 4096, 'bf16'), true, 'qkv_proj, 8 rows');
    assert.equal(gemvTakes(9, 6144, 4096, 'bf16'), false, '9 rows');
    assert.equal(gemvTakes(1, 28672, 4096, 'bf16'), false, 'gate_up_proj (224 MiB)');
    assert.equal(gemvTakes(1, 4096, 14336, 'f16'), false, 'down_proj (112 MiB)');
    assert.equal(gemvTakes(4, 128256, 4096, 'f32'), true, 'lm_head, f32 logits');
    assert.equal(gemvTakes(1, 4096, 4100, 'bf16'), false, 'K % 8 != 0');
    assert.equal(gemvTakes(0, 4096, 4096, 'bf16'), false, 'no rows');
  });
  await withPolicy({ enabled: true, all: true, maxRows: 16 }, () => {
    assert.equal(gemvTakes(16, 28672, 4096, 'bf16'), true, 'all: gate_up_proj, 16 rows');
    assert.equal(gemvTakes(17, 64, 64, 'bf16'), false, 'more rows than the kernels take');
  });
  await withPolicy({ enabled: false, all: true }, () => assert.equal(gemvTakes(1, 64, 64, 'bf16'), false, 'PEREGRINE_GEMV=0'));
});

const { gpu, reason } = openCuda();

if (!gpu) {
  test('CUDA GEMV', (t) => t.skip(`no CUDA device: ${reason}`));
} else {
  const h = new Harness(gpu, SEED);
  const ctx: GemvContext = { kernels: gpu.kernels, stream: gpu.stream };
  after(() => {
    h.dispose();
    gpu.dispose();
  });
  const tolFor = (outDtype: DType): number | undefined => (outDtype === 'f32' ? F32_TOL : undefined);

  /** out = x @ w^T (+ bias) on both backends through `linear`, compared. */
  async function checkLinear(dtype: 'bf16' | 'f16', outDtype: DType, M: number, N: number, K: number, bias: Pair | null): Promise<void> {
    const x = h.rand([M, K], dtype);
    const w = h.rand([N, K], dtype, 0.05);
    const out = h.output([M, N], outDtype);
    assert.ok(gemvSuits(out.gpu as CudaTensor, x.gpu as CudaTensor, w.gpu as CudaTensor, (bias?.gpu ?? null) as CudaTensor | null, M), `the GEMV takes M=${M} N=${N} K=${K}`);
    h.cpu.linear(out.cpu, x.cpu, w.cpu, bias?.cpu ?? null, M);
    h.gpu.linear(out.gpu, x.gpu, w.gpu, bias?.gpu ?? null, M);
    await h.expectClose(out, `gemv ${dtype}->${outDtype} M=${M} N=${N} K=${K} bias=${bias?.dtype ?? 'none'}`, undefined, tolFor(outDtype));
  }

  /** A linear captured in a CUDA graph reads x as it is at replay (x rewritten between capture and replay). */
  async function checkGraphReplay(what: string): Promise<void> {
    const [M, N, K] = [2, 515, 1024];
    const x = h.rand([M, K], 'bf16');
    const w = h.rand([N, K], 'bf16', 0.05);
    const out = h.output([M, N], 'f32');
    h.gpu.beginCapture();
    h.gpu.linear(out.gpu, x.gpu, w.gpu, null, M);
    const graph = h.gpu.endCapture();
    try {
      const fresh = h.rand([M, K], 'bf16');
      h.gpu.writeF32(x.gpu, await h.gpu.downloadF32(fresh.gpu));
      h.gpu.replay(graph);
      h.cpu.linear(out.cpu, fresh.cpu, w.cpu, null, M);
      await h.expectClose(out, `${what} in a graph, x rewritten before the replay`, undefined, F32_TOL);
    } finally {
      graph.dispose();
    }
  }

  describe(`CUDA GEMV on ${gpu.props.name} (seed ${SEED}, kernels from ${gpu.kernels.origin})`, () => {
    // the kernels take up to 16 rows; the default policy only 8
    test('every M from 1 to 16 (one and two n8 tiles), bf16 and f32 out, bias on odd M', () => withPolicy({ enabled: true, maxRows: 16 }, async () => {
      const [N, K] = [333, 520];
      for (let M = 1; M <= 16; M++) {
        for (const outDtype of ['bf16', 'f32'] as const) {
          await checkLinear('bf16', outDtype, M, N, K, M % 2 === 1 ? h.rand([N], outDtype) : null);
        }
      }
    }));

    test('odd N, K with a partial last chunk, bf16/f16, operand and f32 out, bias in out dtype or half for f32 out', () => withPolicy({ enabled: true, maxRows: 16 }, async () => {
      for (const dtype of ['bf16', 'f16'] as const) {
        for (const [N, K] of [[1, 8], [17, 40], [1031, 4104]] as const) {
          for (const M of N > 1000 ? [1, 9] : [1, 5, 8, 9, 16]) {
            for (const outDtype of [dtype, 'f32'] as const) {
              await checkLinear(dtype, outDtype, M, N, K, null);
              await checkLinear(dtype, outDtype, M, N, K, h.rand([N], outDtype));
              if (outDtype === 'f32') await checkLinear(dtype, outDtype, M, N, K, h.rand([N], dtype));
            }
          }
        }
      }
    }));

    test('every launch plan (warps 1/2/4/8, unroll 4/8, pipelined 2/4 up to 8 rows) gives the same result', async () => {
      const [N, K] = [40, 2056];
      for (const M of [3, 12]) {
        const x = h.rand([M, K], 'f16');
        const w = h.rand([N, K], 'f16', 0.05);
        const bias = h.rand([N], 'f32');
        const ref = h.output([M, N], 'f32');
        h.cpu.linear(ref.cpu, x.cpu, w.cpu, bias.cpu, M);
        for (const plan of gemvPlans(M)) {
          const out = h.output([M, N], 'f32');
          gemv(ctx, { out: (out.gpu as CudaTensor).ptr, outDtype: 'f32', x: (x.gpu as CudaTensor).ptr, w: (w.gpu as CudaTensor).ptr, dtype: 'f16', bias: (bias.gpu as CudaTensor).ptr, biasDtype: 'f32', M, N, K }, plan);
          await h.expectClose({ cpu: ref.cpu, gpu: out.gpu, dtype: 'f32' }, `gemv plan ${gemvPlanName(plan)}, M=${M}`, undefined, F32_TOL);
        }
      }
    });

    test('replayed from a CUDA graph, it reads the inputs as they are at replay', () => withPolicy({ enabled: true }, () => checkGraphReplay('gemv')));

    test('PEREGRINE_GEMV=ring: the ring-buffered GEMV (dense qgemv) for 1..8 rows, odd N, K from one step to 14336, bias, f32 out, graph replay', () => withPolicy({ enabled: true, ring: true }, async () => {
      const ringCtx: GemvContext = { ...ctx, numSMs: gpu.props.numSMs, maxSharedBytesPerBlock: gpu.props.maxSharedBytesPerBlock };
      const t = (p: Pair): CudaTensor => p.gpu as CudaTensor;
      const cases: Array<[M: number, N: number, K: number]> = [[1, 1, 32], [3, 17, 96], [8, 333, 544], [1, 4096, 4096], [5, 1031, 4096], [8, 6144, 4096], [1, 4096, 14336], [6, 200, 14336]];
      for (const dtype of ['bf16', 'f16'] as const) {
        for (const [M, N, K] of cases) {
          for (const outDtype of [dtype, 'f32'] as const) {
            const x = h.rand([M, K], dtype), w = h.rand([N, K], dtype, 0.05), out = h.output([M, N], outDtype);
            const bias = M % 2 === 1 ? h.rand([N], outDtype) : null;
            assert.ok(ringGemvSuits(ringCtx, t(out), t(x), t(w), bias ? t(bias) : null, M), `the ring GEMV takes M=${M} N=${N} K=${K}`);
            h.cpu.linear(out.cpu, x.cpu, w.cpu, bias?.cpu ?? null, M);
            h.gpu.linear(out.gpu, x.gpu, w.gpu, bias?.gpu ?? null, M);
            await h.expectClose(out, `ring gemv ${dtype}->${outDtype} M=${M} N=${N} K=${K} bias=${bias ? 'yes' : 'none'}`, undefined, tolFor(outDtype));
          }
        }
      }
      // what it leaves to the other paths
      const x = h.rand([9, 4096], 'bf16'), w = h.rand([64, 4096], 'bf16'), out = h.output([9, 64], 'bf16');
      assert.equal(ringGemvSuits(ringCtx, t(out), t(x), t(w), null, 9), false, 'M = 9');
      const x7 = h.rand([7, 14336], 'bf16'), w7 = h.rand([16, 14336], 'bf16'), o7 = h.output([7, 16], 'bf16');
      assert.equal(ringGemvSuits(ringCtx, t(o7), t(x7), t(w7), null, 7), false, 'x of 7 x 14336 halves does not fit a block');
      const x40 = h.rand([2, 40], 'bf16'), w40 = h.rand([16, 40], 'bf16'), o40 = h.output([2, 16], 'bf16');
      assert.equal(ringGemvSuits(ringCtx, t(o40), t(x40), t(w40), null, 2), false, 'K % 32');
      assert.equal(ringGemvSuits(ctx, t(out), t(x), t(w), null, 2), false, 'no SM count in the context');
      await checkGraphReplay('ring gemv');
    }));

    test('PEREGRINE_GEMV=ring: fusedLinear with siluMul / rmsNorm inputs and accumulate = the separate ops (siluMul bit for bit); declined without ring', () => withPolicy({ enabled: true, ring: true }, async () => {
      const bits = (p: Pair) => gpu.downloadF32(p.gpu);
      for (const dtype of ['bf16', 'f16'] as const) {
        for (const [M, N, K] of [[1, 4096, 14336], [3, 77, 96], [6, 200, 14336], [8, 512, 1024]] as const) {
          for (const outDtype of [dtype, 'f32'] as const) {
            const what = `${dtype}->${outDtype} M=${M} N=${N} K=${K}`;
            const gateUp = h.rand([M, 2 * K], dtype, 4), w = h.rand([N, K], dtype, 0.05);
            const bias = M % 2 === 1 ? h.rand([N], outDtype) : null;
            // siluMul: the same bits as siluMul + linear, and close to the CPU reference
            const fused = h.output([M, N], outDtype), act = h.output([M, K], dtype), twoOps = h.output([M, N], outDtype);
            assert.equal(gpu.fusedLinear(fused.gpu, gateUp.gpu, w.gpu, bias?.gpu ?? null, M, { input: { kind: 'siluMul' } }), true, `siluMul ${what}`);
            gpu.siluMul(act.gpu, gateUp.gpu, M);
            gpu.linear(twoOps.gpu, act.gpu, w.gpu, bias?.gpu ?? null, M);
            assert.deepEqual(await bits(fused), await bits(twoOps), `fused siluMul ${what}: the bits of siluMul + linear`);
            h.cpu.siluMul(act.cpu, gateUp.cpu, M);
            h.cpu.linear(fused.cpu, act.cpu, w.cpu, bias?.cpu ?? null, M);
            // the activation is rounded to `dtype` (bit for bit as siluMul rounds it, asserted above): the GPU's and
            // the CPU's silu may round an element differently, so the CPU comparison takes `dtype`'s tolerance
            await h.expectClose(fused, `fused siluMul ${what} vs the CPU reference`, undefined, TOL[dtype]);
            // rmsNorm input (weight offset 1, as Gemma stores it) against rmsNorm + linear on the CPU
            const x = h.rand([M, K], dtype, 2), normW = h.rand([K], dtype, 0.5), normed = h.output([M, K], dtype), out = h.output([M, N], outDtype);
            assert.equal(gpu.fusedLinear(out.gpu, x.gpu, w.gpu, bias?.gpu ?? null, M, { input: { kind: 'rmsNorm', weight: normW.gpu, eps: 1e-5, weightOffset: 1 } }), true, `rmsNorm ${what}`);
            h.cpu.rmsNorm(normed.cpu, x.cpu, normW.cpu, 1e-5, M, null, 1);
            h.cpu.linear(out.cpu, normed.cpu, w.cpu, bias?.cpu ?? null, M);
            await h.expectClose(out, `fused rmsNorm ${what} vs the CPU reference`, undefined, TOL[dtype]); // normed x staged as dtype
            // accumulate: out += linear(x), rounded to out's dtype first, = linear then add on the GPU
            if (outDtype !== 'f32') {
              const acc = h.rand([M, N], outDtype), sum = h.output([M, N], outDtype), lin = h.output([M, N], outDtype);
              const before = await bits(acc);
              gpu.linear(lin.gpu, x.gpu, w.gpu, bias?.gpu ?? null, M);
              gpu.add(sum.gpu, acc.gpu, lin.gpu, M);
              assert.equal(gpu.fusedLinear(acc.gpu, x.gpu, w.gpu, bias?.gpu ?? null, M, { accumulate: true }), true, `accumulate ${what}`);
              assert.deepEqual(await bits(acc), await bits(sum), `accumulate ${what}: the bits of linear + add (from ${before[0]})`);
            }
          }
        }
      }
      const gateUp = h.rand([2, 2 * 64], 'bf16'), w = h.rand([16, 64], 'bf16'), out = h.output([2, 16], 'bf16');
      await withPolicy({ ring: false }, () => assert.equal(gpu.fusedLinear(out.gpu, gateUp.gpu, w.gpu, null, 2, { input: { kind: 'siluMul' } }), false, 'declined without PEREGRINE_GEMV=ring'));
      const big = h.rand([9, 2 * 64], 'bf16'), outBig = h.output([9, 16], 'bf16');
      assert.equal(gpu.fusedLinear(outBig.gpu, big.gpu, w.gpu, null, 9, { input: { kind: 'siluMul' } }), false, 'declined for 9 rows');
      assert.throws(() => gpu.fusedLinear(out.gpu, h.rand([2, 64], 'bf16').gpu, w.gpu, null, 2, { input: { kind: 'siluMul' } }), /gateUp/, 'gateUp must be 2K wide');
    }));

    test('what it leaves to cuBLASLt: K % 8 != 0, M > 16, PEREGRINE_GEMV=0, a bias cuBLASLt would refuse', () => withPolicy({ enabled: true, maxRows: 16 }, async () => {
      const t = (p: Pair): CudaTensor => p.gpu as CudaTensor;
      const x = h.rand([17, 36], 'bf16'), w = h.rand([20, 36], 'bf16'), out = h.output([17, 20], 'bf16');
      assert.equal(gemvSuits(t(out), t(x), t(w), null, 2), false, 'K = 36');
      const x2 = h.rand([17, 64], 'bf16'), w2 = h.rand([20, 64], 'bf16');
      assert.equal(gemvSuits(t(out), t(x2), t(w2), null, 16), true);
      assert.equal(gemvSuits(t(out), t(x2), t(w2), null, 17), false, 'M = 17');
      assert.equal(gemvSuits(t(out), t(x2), t(w2), t(h.rand([20], 'f32')), 2), false, 'f32 bias, bf16 out');
      await withPolicy({ enabled: false }, () => assert.equal(gemvSuits(t(out), t(x2), t(w2), null, 2), false, 'policy off'));
      // the fallback still computes the op
      const o = h.output([2, 20], 'bf16');
      h.cpu.linear(o.cpu, x.cpu, w.cpu, null, 2);
      gpu.linear(o.gpu, x.gpu, w.gpu, null, 2);
      await h.expectClose(o, 'linear K=36 through cuBLASLt');
    }));
  });
}
