/**
 * The CUDA ops of the model zoo (scale, softcap, clamp, qkRmsNorm, moeRoute, moeExperts)
 * against the CPU reference on fresh random inputs. Without a CUDA device the suite skips.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { DType } from '../../src/backends/backend.js';
import { cpuData } from '../../src/backends/cpu/cpu-backend.js';
import { Harness, openCuda, SEED } from './cuda-harness.js';

const { gpu, reason } = openCuda();

if (!gpu) {
  test('CUDA model-zoo ops', (t) => t.skip(`no CUDA device: ${reason}`));
} else {
  const h = new Harness(gpu, SEED + 2);
  after(() => {
    h.dispose();
    gpu.dispose();
  });
  const FLOATS: DType[] = ['bf16', 'f16', 'f32'];

  describe(`CUDA model-zoo ops on ${gpu.props.name} (seed ${SEED + 2})`, () => {
    test('scale, softcap and clamp, also in place', async () => {
      for (const dtype of FLOATS) {
        for (const [T, H] of [[3, 1001], [4, 4096]] as const) {
          const x = h.rand([T, H], dtype, 60);
          const s = h.output([T, H], dtype);
          h.cpu.scale(s.cpu, x.cpu, 0.37, T);
          gpu.scale(s.gpu, x.gpu, 0.37, T);
          await h.expectClose(s, `scale ${dtype} [${T}, ${H}]`);
          const c = h.output([T, H], dtype);
          h.cpu.clamp(c.cpu, x.cpu, -20, 15, T);
          gpu.clamp(c.gpu, x.gpu, -20, 15, T);
          await h.expectClose(c, `clamp ${dtype}`);
          h.cpu.softcap(x.cpu, x.cpu, 30, T);
          gpu.softcap(x.gpu, x.gpu, 30, T);
          await h.expectClose(x, `softcap in place ${dtype}`);
        }
      }
    });

    test('qkRmsNorm normalises each q and k head in place and leaves v', async () => {
      for (const dtype of FLOATS) {
        for (const [headDim, numHeads, numKvHeads, offset] of [[128, 8, 2, 0], [80, 3, 1, 1], [256, 4, 4, 0]] as const) {
          const T = 5;
          const qkv = h.rand([T, (numHeads + 2 * numKvHeads) * headDim], dtype, 3);
          const qw = h.rand([headDim], dtype);
          const kw = h.rand([headDim], dtype);
          const p = { numHeads, numKvHeads, headDim, weightOffset: offset };
          h.cpu.qkRmsNorm(qkv.cpu, qw.cpu, kw.cpu, 1e-6, T, p);
          gpu.qkRmsNorm(qkv.gpu, qw.gpu, kw.gpu, 1e-6, T, p);
          await h.expectClose(qkv, `qkRmsNorm ${dtype} D=${headDim} ${numHeads}/${numKvHeads} offset ${offset}`);
        }
      }
    });

    test('moeRoute picks the same experts with the same weights', async () => {
      for (const [E, topK, renormalize] of [[8, 2, true], [64, 6, false], [60, 4, true]] as const) {
        const T = 33;
        const logits = h.rand([T, E], 'f32', 4);
        const ids = h.ints([T, topK], new Int32Array(T * topK).fill(-7));
        const w = h.output([T, topK], 'f32');
        h.cpu.moeRoute(ids.cpu, w.cpu, logits.cpu, T, topK, renormalize);
        gpu.moeRoute(ids.gpu, w.gpu, logits.gpu, T, topK, renormalize);
        assert.deepEqual([...(await gpu.downloadI32(ids.gpu))], [...(cpuData(ids.cpu) as Int32Array)], `moeRoute ids E=${E} topK=${topK} (seed ${SEED + 2})`);
        await h.expectClose(w, `moeRoute weights E=${E} topK=${topK}`, undefined, 1e-5);
      }
    });

    test('moeExperts sums the weighted SiLU-gated experts of each token', async () => {
      for (const dtype of ['bf16', 'f16', 'f32'] as const) {
        const [T, E, H, I, topK] = [7, 5, 256, 96, 2];
        const x = h.rand([T, H], dtype);
        const gateUp = h.rand([E, 2 * I, H], dtype, 0.1);
        const down = h.rand([E, H, I], dtype, 0.1);
        const ids = h.ints([T, topK], Int32Array.from({ length: T * topK }, (_, i) => (i * 3 + (i % topK)) % E));
        const w = h.fromF32([T, topK], h.uniform(T * topK).map(Math.abs), 'f32');
        const out = h.output([T, H], dtype);
        h.cpu.moeExperts(out.cpu, x.cpu, gateUp.cpu, down.cpu, ids.cpu, w.cpu, T);
        gpu.moeExperts(out.gpu, x.gpu, gateUp.gpu, down.gpu, ids.gpu, w.gpu, T);
        await h.expectClose(out, `moeExperts ${dtype} T=${T} E=${E} H=${H} I=${I} topK=${topK}`);
      }
    });
  });
}
