/**
 * RMSNorm and SiLU * up fused with FP8 activation quantization (rmsNormFp8, siluMulFp8; issue 6) and the one-pass activation quantizer
 * (quant_fp8_rows) on CUDA, on fresh random inputs (PEREGRINE_TEST_SEED to replay):
 * - rmsNormFp8 = rmsNorm then quantization, bit for bit: out, the residual, codes and scales, for H below /
 *   above 8 * 1024 (threads holding one or two packs), with and without residual, static / dynamic scales,
 *   bf16 / f16, 1 / 5 / 64 rows;
 * - quant_fp8_rows = quant_fp8_act bit for bit;
 * - both = the CPU reference (fakeQuantizeActivationsFp8 of the same values): codes and scales exactly;
 * - rows wider than the packs a thread keeps in registers (computed again for the codes) alike;
 * - given `onlyReader`, out is left as it was where that FP8 linear reads the codes alone, and written where it
 *   reads x (the dequantizing path); the codes and the linear's output are the same either way;
 * - the cases it does not fuse (H % 8 != 0) return false, malformed xq throws naming it.
 * Without a CUDA device the suite skips.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Fp8Activations, Tensor } from '../../src/backends/backend.js';
import { forceQuantPath, quantizeFp8Activations } from '../../src/backends/cuda/cuda-quant.js';
import { quantFastPolicy } from '../../src/backends/cuda/cuda-quant-gemv.js';
import { siluFp8Forced } from '../../src/backends/cuda/cuda-quant-norm.js';
import { isPeregrineError } from '../../src/errors.js';
import { decodeE4M3, fakeQuantizeActivationsFp8 } from '../../src/weights/quant/fp8.js';
import { freeQuantWeight, uploadQuantWeight } from '../../src/weights/quant/load.js';
import { quantizeWeight } from '../../src/weights/quant/quantize.js';
import { Harness, openCuda, SEED } from './cuda-harness.js';

const { gpu, reason } = openCuda();

if (!gpu) {
  test('CUDA RMSNorm + FP8 quantization', (t) => t.skip(`no CUDA device: ${reason}`));
} else {
  const h = new Harness(gpu, SEED);
  after(() => {
    h.dispose();
    gpu.dispose();
  });
  const [ccMajor, ccMinor] = gpu.props.computeCapability;

  const xqOf = (T: number, H: number): Fp8Activations => ({ codes: gpu.empty([T, H / 4], 'i32'), scales: gpu.empty([T], 'f32') });
  const freeXq = (a: Fp8Activations): void => {
    gpu.free(a.codes);
    gpu.free(a.scales);
  };
  const bytesOf = async (t: Tensor): Promise<Uint8Array> => new Uint8Array((await gpu.downloadI32(t)).buffer);
  const sameArrays = (a: ArrayLike<number>, b: ArrayLike<number>, what: string): void => {
    assert.equal(a.length, b.length, what);
    for (let i = 0; i < a.length; i++) {
      if (!Object.is(a[i], b[i])) assert.fail(`${what}: element ${i} is ${a[i]} vs ${b[i]} (seed ${SEED})`);
    }
  };
  /** codes and scales of xq against the CPU reference quantization of `values` (the rows the GPU quantized) */
  const checkAgainstCpu = async (xq: Fp8Activations, values: Float32Array, T: number, H: number, inputScale: number | null, what: string): Promise<void> => {
    const codes = (await bytesOf(xq.codes)).subarray(0, T * H);
    const scales = (await gpu.downloadF32(xq.scales)).subarray(0, T);
    const want = new Float32Array(T * H);
    const wantScales = fakeQuantizeActivationsFp8(values, T, H, inputScale, want);
    sameArrays(scales, wantScales, `${what}: scales vs CPU`);
    for (let t = 0; t < T; t++) {
      for (let k = 0; k < H; k++) {
        const got = decodeE4M3(codes[t * H + k]!) * scales[t]!;
        const w = want[t * H + k]!;
        if (Math.fround(got) !== w) assert.fail(`${what}: row ${t} element ${k}: code ${codes[t * H + k]} -> ${got} vs CPU ${w} (x ${values[t * H + k]}; seed ${SEED})`);
      }
    }
  };

  /** A fused producer's out and E4M3 codes / scales = the unfused op's out and its quantization, bit for bit, and = the CPU reference. */
  const sameAsUnfused = async (out: Tensor, fused: Fp8Activations, unfusedOut: Tensor, ref: Fp8Activations, T: number, width: number, staticScale: number | null, what: string): Promise<void> => {
    const values = await gpu.downloadF32(out);
    sameArrays(values, await gpu.downloadF32(unfusedOut), `${what}: out`);
    sameArrays(await bytesOf(fused.codes), await bytesOf(ref.codes), `${what}: codes`);
    sameArrays(await gpu.downloadF32(fused.scales), await gpu.downloadF32(ref.scales), `${what}: scales`);
    await checkAgainstCpu(fused, values, T, width, staticScale === null ? null : Math.fround(staticScale), what);
  };

  describe(`CUDA RMSNorm + FP8 quantization on ${gpu.props.name} (sm_${ccMajor}${ccMinor}, seed ${SEED})`, () => {
    test('rmsNormFp8 = rmsNorm then quantization, bit for bit, and = the CPU reference', async () => {
      for (const act of ['bf16', 'f16'] as const) {
        for (const [T, H] of [[1, 4096], [5, 8200], [64, 1024], [2, 66000]] as const) {
          for (const residual of [false, true]) {
            for (const staticScale of [null, 0.02]) {
              const what = `${act} T=${T} H=${H}${residual ? ' +residual' : ''} ${staticScale === null ? 'dynamic' : 'static'}`;
              const x = h.rand([T, H], act, 3);
              const w = h.rand([H], act, 1.5);
              const r0 = h.rand([T, H], act, 2);
              const r1 = h.rand([T, H], act);
              gpu.copy(r1.gpu, r0.gpu, T);
              const inputScale = staticScale === null ? null : h.fromF32([1], Float32Array.of(staticScale), 'f32').gpu;
              const outA = h.output([T, H], act), outB = h.output([T, H], act);
              const fused = xqOf(T, H), ref = xqOf(T, H);
              try {
                const ran = gpu.rmsNormFp8(outA.gpu, x.gpu, w.gpu, 1e-5, T, residual ? r0.gpu : null, 0.5, fused, inputScale);
                assert.equal(ran, true, `${what}: fused`);
                gpu.rmsNorm(outB.gpu, x.gpu, w.gpu, 1e-5, T, residual ? r1.gpu : null, 0.5);
                quantizeFp8Activations(gpu, ref, outB.gpu, T, inputScale);
                await sameAsUnfused(outA.gpu, fused, outB.gpu, ref, T, H, staticScale, what);
                if (residual) sameArrays(await gpu.downloadF32(r0.gpu), await gpu.downloadF32(r1.gpu), `${what}: residual`);
              } finally {
                freeXq(fused);
                freeXq(ref);
              }
            }
          }
        }
      }
    });

    test('siluMulFp8 = siluMul then quantization, bit for bit, and = the CPU reference, every kernel (few / many rows, a row over a cluster on sm_90+); declines I % 8 != 0', async () => {
      type Variant = readonly ['bf16' | 'f16', 'few' | 'many' | 'cluster'];
      const clusters: Variant[] = gpu.props.computeCapability[0] >= 9 ? [['bf16', 'cluster'], ['f16', 'cluster']] : [];
      const variants: Variant[] = [['bf16', 'few'], ['f16', 'few'], ['bf16', 'many'], ['f16', 'many'], ...clusters];
      for (const [act, variant] of variants) {
        siluFp8Forced.variant = variant;
        for (const [T, I] of [[1, 14336], [5, 1000], [64, 4096], [2, 140000]] as const) {
          for (const staticScale of [null, 0.02]) {
            const what = `siluMulFp8 (${variant} rows kernel) ${act} T=${T} I=${I} ${staticScale === null ? 'dynamic' : 'static'}`;
            const gateUp = h.rand([T, 2 * I], act, 4);
            const inputScale = staticScale === null ? null : h.fromF32([1], Float32Array.of(staticScale), 'f32').gpu;
            const outA = h.output([T, I], act), outB = h.output([T, I], act);
            const fused = xqOf(T, I), ref = xqOf(T, I);
            try {
              assert.equal(gpu.siluMulFp8(outA.gpu, gateUp.gpu, T, fused, inputScale), true, `${what}: fused`);
              gpu.siluMul(outB.gpu, gateUp.gpu, T);
              quantizeFp8Activations(gpu, ref, outB.gpu, T, inputScale);
              await sameAsUnfused(outA.gpu, fused, outB.gpu, ref, T, I, staticScale, what);
            } finally {
              freeXq(fused);
              freeXq(ref);
            }
          }
        }
      }
      siluFp8Forced.variant = null;
      const xq = xqOf(2, 1004);
      try {
        assert.equal(gpu.siluMulFp8(h.output([2, 1004], 'bf16').gpu, h.rand([2, 2008], 'bf16').gpu, 2, xq, null), false, 'I = 1004 is not a multiple of 8');
      } finally {
        freeXq(xq);
      }
    });

    test('onlyReader: out left unwritten where the FP8 linear reads the codes alone, written where it reads x; same codes and linear output', { skip: ccMajor * 10 + ccMinor < 89 && 'FP8 tensor cores need sm_89+' }, async () => {
      const I = 4096, N = 1024;
      const w = uploadQuantWeight(quantizeWeight(h.uniform(N * I, 0.05), N, I, { kind: 'fp8', fp8Scale: 'channel' }), gpu);
      try {
        for (const T of [1, 64]) {
          for (const path of [null, 'dequant'] as const) {
            const what = `T=${T} path ${path ?? 'default'}`;
            const gateUp = h.rand([T, 2 * I], 'bf16', 4);
            const x = h.rand([T, I], 'bf16', 3), nw = h.rand([I], 'bf16', 1.5);
            const sentinel = h.rand([T, I], 'bf16');
            const outA = h.output([T, I], 'bf16'), outB = h.output([T, I], 'bf16');
            const yA = h.output([T, N], 'bf16'), yB = h.output([T, N], 'bf16');
            const a = xqOf(T, I), b = xqOf(T, I);
            forceQuantPath(path);
            try {
              for (const op of ['silu', 'norm'] as const) {
                gpu.copy(outA.gpu, sentinel.gpu, T);
                const ran: boolean = op === 'silu'
                  ? gpu.siluMulFp8(outA.gpu, gateUp.gpu, T, a, null, w) && gpu.siluMulFp8(outB.gpu, gateUp.gpu, T, b, null)
                  : gpu.rmsNormFp8(outA.gpu, x.gpu, nw.gpu, 1e-5, T, null, 0, a, null, w) && gpu.rmsNormFp8(outB.gpu, x.gpu, nw.gpu, 1e-5, T, null, 0, b, null);
                assert.equal(ran, true, `${what} ${op}: fused`);
                sameArrays(await bytesOf(a.codes), await bytesOf(b.codes), `${what} ${op}: codes`);
                sameArrays(await gpu.downloadF32(a.scales), await gpu.downloadF32(b.scales), `${what} ${op}: scales`);
                const wantOut = await gpu.downloadF32(path === 'dequant' ? outB.gpu : sentinel.gpu);
                sameArrays(await gpu.downloadF32(outA.gpu), wantOut, `${what} ${op}: out ${path === 'dequant' ? 'written' : 'left as it was'}`);
                gpu.linear(yA.gpu, outA.gpu, w, null, T, a);
                gpu.linear(yB.gpu, outB.gpu, w, null, T, b);
                sameArrays(await gpu.downloadF32(yA.gpu), await gpu.downloadF32(yB.gpu), `${what} ${op}: linear output`);
              }
            } finally {
              forceQuantPath(null);
              freeXq(a);
              freeXq(b);
            }
          }
        }
      } finally {
        freeQuantWeight(w, gpu);
      }
    });

    test('quant_fp8_rows (one pass) = quant_fp8_act bit for bit, = the CPU reference; zero rows get the minimum scale', async () => {
      const saved = quantFastPolicy.fused;
      try {
        for (const [T, K] of [[1, 4096], [3, 14336], [2, 64 * 1024], [7, 200]] as const) {
          const data = h.uniform(T * K, 4);
          data.fill(0, 0, K); // row 0 all zeros
          const x = h.fromF32([T, K], data, 'bf16');
          const a = xqOf(T, K), b = xqOf(T, K);
          try {
            quantFastPolicy.fused = true;
            quantizeFp8Activations(gpu, a, x.gpu, T, null);
            quantFastPolicy.fused = false;
            quantizeFp8Activations(gpu, b, x.gpu, T, null);
            sameArrays(await bytesOf(a.codes), await bytesOf(b.codes), `T=${T} K=${K}: codes`);
            sameArrays(await gpu.downloadF32(a.scales), await gpu.downloadF32(b.scales), `T=${T} K=${K}: scales`);
            await checkAgainstCpu(a, await gpu.downloadF32(x.gpu), T, K, null, `T=${T} K=${K}`);
          } finally {
            freeXq(a);
            freeXq(b);
          }
        }
      } finally {
        quantFastPolicy.fused = saved;
      }
    });

    test('rows it cannot fuse return false; malformed xq throws naming it', () => {
      const x = h.rand([2, 1004], 'bf16');
      const w = h.rand([1004], 'bf16');
      const out = h.output([2, 1004], 'bf16');
      const xq = xqOf(2, 1004);
      try {
        assert.equal(gpu.rmsNormFp8(out.gpu, x.gpu, w.gpu, 1e-5, 2, null, 0, xq, null), false, 'H = 1004 is not a multiple of 8');
        const x2 = h.rand([2, 256], 'bf16'), w2 = h.rand([256], 'bf16'), out2 = h.output([2, 256], 'bf16');
        const bad = { codes: xq.codes, scales: xq.scales };
        assert.throws(() => gpu.rmsNormFp8(out2.gpu, x2.gpu, w2.gpu, 1e-5, 2, null, 0, bad, null), (e: unknown) => isPeregrineError(e) && /xq\.codes must be i32 \[>= 2, 64\]/.test(e.message));
      } finally {
        freeXq(xq);
      }
    });
  });
}
