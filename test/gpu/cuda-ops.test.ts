/**
 * Every CUDA op but attention (see cuda-attention.test.ts) against the CPU reference on
 * fresh random inputs (PEREGRINE_TEST_SEED to replay one), odd and 16-byte-packed widths,
 * each float dtype the op supports; plus uploads, the allocator and CUDA-graph replay.
 * Without a CUDA device the suite skips.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { DType, LayerKvCache, RopeParams } from '../../src/backends/backend.js';
import { cpuData } from '../../src/backends/cpu/cpu-backend.js';
import { isPeregrineError } from '../../src/errors.js';
import { f32ToBf16, f32ToF16 } from '../../src/weights/dtype.js';
import { ropeVec } from '../../src/backends/cuda/cuda-ops.js';
import { Harness, openCuda, SEED } from './cuda-harness.js';

const { gpu, reason } = openCuda();

if (!gpu) {
  test('CUDA ops', (t) => t.skip(`no CUDA device: ${reason}`));
} else {
  const h = new Harness(gpu, SEED);
  after(() => {
    h.dispose();
    gpu.dispose();
  });
  const FLOATS: DType[] = ['bf16', 'f16', 'f32'];

  describe(`CUDA ops on ${gpu.props.name} (seed ${SEED}, kernels from ${gpu.kernels.origin})`, () => {
    test('embedding and gatherRows copy rows exactly', async () => {
      for (const dtype of FLOATS) {
        for (const H of [257, 4096]) {
          const table = h.rand([1000, H], dtype);
          const ids = h.ints([9], Int32Array.from({ length: 9 }, () => Math.floor(h.r() * 1000)));
          const out = h.output([9, H], dtype);
          h.cpu.embedding(out.cpu, table.cpu, ids.cpu, 9);
          gpu.embedding(out.gpu, table.gpu, ids.gpu, 9);
          await h.expectClose(out, `embedding ${dtype} H=${H}`, undefined, 0);
          const rows = h.output([4, H], dtype);
          const idx = h.ints([4], Int32Array.from([8, 0, 8, 3]));
          h.cpu.gatherRows(rows.cpu, out.cpu, idx.cpu, 4);
          gpu.gatherRows(rows.gpu, out.gpu, idx.gpu, 4);
          await h.expectClose(rows, `gatherRows ${dtype} H=${H}`, undefined, 0);
        }
      }
    });

    test('embeddingShard: rows inside the shard exactly, zeros for ids below and above it', async () => {
      for (const dtype of FLOATS) {
        for (const H of [257, 4096]) {
          const table = h.rand([300, H], dtype); // vocab rows 500..799
          const idList = [500, 799, 499, 800, 0, 650, 1500, 512, 700];
          for (let i = 0; i < 7; i++) idList.push(Math.floor(h.r() * 1200));
          const ids = h.ints([idList.length], Int32Array.from(idList));
          const out = h.output([idList.length, H], dtype);
          h.cpu.embeddingShard(out.cpu, table.cpu, ids.cpu, idList.length, 500);
          gpu.embeddingShard(out.gpu, table.gpu, ids.gpu, idList.length, 500);
          await h.expectClose(out, `embeddingShard ${dtype} H=${H}`, undefined, 0);
        }
      }
      const table = h.rand([4, 8], 'f32');
      const ids = h.ints([2], Int32Array.from([1, 2]));
      assert.throws(() => gpu.embeddingShard(h.output([2, 8], 'f32').gpu, table.gpu, ids.gpu, 2, -3), (e: unknown) => isPeregrineError(e) && /embeddingShard: vocabStart/.test(e.message));
    });

    test('copy and add (also in place), odd and packed widths', async () => {
      for (const dtype of FLOATS) {
        for (const [T, H] of [[7, 1001], [5, 4096], [1, 8]] as const) {
          const a = h.rand([T + 2, H], dtype);
          const b = h.rand([T + 2, H], dtype);
          const out = h.output([T, H], dtype);
          h.cpu.add(out.cpu, a.cpu, b.cpu, T);
          gpu.add(out.gpu, a.gpu, b.gpu, T);
          await h.expectClose(out, `add ${dtype} [${T}, ${H}]`);
          h.cpu.add(a.cpu, a.cpu, b.cpu, T);
          gpu.add(a.gpu, a.gpu, b.gpu, T);
          await h.expectClose(a, `add in place ${dtype} [${T}, ${H}]`);
          const c = h.output([T, H], dtype);
          h.cpu.copy(c.cpu, b.cpu, T);
          gpu.copy(c.gpu, b.gpu, T);
          await h.expectClose(c, `copy ${dtype} [${T}, ${H}]`, undefined, 0);
        }
      }
    });

    test('relu, gelu (erf, tanh), siluMul, geluMul', async () => {
      for (const dtype of FLOATS) {
        for (const [T, I] of [[3, 1003], [4, 14336 / 4]] as const) {
          const x = h.rand([T, I], dtype, 4);
          for (const approx of ['none', 'tanh'] as const) {
            const out = h.output([T, I], dtype);
            h.cpu.gelu(out.cpu, x.cpu, T, approx);
            gpu.gelu(out.gpu, x.gpu, T, approx);
            await h.expectClose(out, `gelu ${approx} ${dtype} [${T}, ${I}]`);
          }
          const r = h.output([T, I], dtype);
          h.cpu.relu(r.cpu, x.cpu, T);
          gpu.relu(r.gpu, x.gpu, T);
          await h.expectClose(r, `relu ${dtype}`);
          const gateUp = h.rand([T, 2 * I], dtype, 4);
          const s = h.output([T, I], dtype);
          h.cpu.siluMul(s.cpu, gateUp.cpu, T);
          gpu.siluMul(s.gpu, gateUp.gpu, T);
          await h.expectClose(s, `siluMul ${dtype} [${T}, ${I}]`);
          for (const approx of ['none', 'tanh'] as const) {
            const g = h.output([T, I], dtype);
            h.cpu.geluMul(g.cpu, gateUp.cpu, T, approx);
            gpu.geluMul(g.gpu, gateUp.gpu, T, approx);
            await h.expectClose(g, `geluMul ${approx} ${dtype} [${T}, ${I}]`);
          }
        }
      }
    });

    test('rmsNorm and layerNorm, with and without the fused residual add', async () => {
      for (const dtype of FLOATS) {
        for (const [T, H] of [[5, 4096], [3, 1000], [2, 77]] as const) {
          const x = h.rand([T, H], dtype, 3);
          const w = h.rand([H], dtype);
          const bias = h.rand([H], dtype);
          for (const fused of [false, true]) {
            const res = fused ? h.rand([T, H], dtype, 3) : null;
            const out = h.output([T, H], dtype);
            h.cpu.rmsNorm(out.cpu, x.cpu, w.cpu, 1e-5, T, res?.cpu, 1);
            gpu.rmsNorm(out.gpu, x.gpu, w.gpu, 1e-5, T, res?.gpu, 1);
            await h.expectClose(out, `rmsNorm ${dtype} [${T}, ${H}] residual=${fused}`);
            if (res) await h.expectClose(res, `rmsNorm residual sum ${dtype}`);
            const res2 = fused ? h.rand([T, H], dtype, 3) : null;
            const ln = h.output([T, H], dtype);
            h.cpu.layerNorm(ln.cpu, x.cpu, w.cpu, fused ? bias.cpu : null, 1e-5, T, res2?.cpu);
            gpu.layerNorm(ln.gpu, x.gpu, w.gpu, fused ? bias.gpu : null, 1e-5, T, res2?.gpu);
            await h.expectClose(ln, `layerNorm ${dtype} [${T}, ${H}] residual+bias=${fused}`);
          }
        }
      }
    });

    test('linear through cuBLASLt: bf16/f16, f32 logits, bias epilogue and bias kernel', async () => {
      for (const dtype of ['bf16', 'f16'] as const) {
        for (const [M, N, K] of [[1, 4096, 512], [7, 1000, 520], [64, 96, 64], [33, 1024, 4096]] as const) {
          const x = h.rand([M, K], dtype);
          const w = h.rand([N, K], dtype, 0.05);
          for (const outDtype of [dtype, 'f32'] as const) {
            for (const withBias of [false, true]) {
              const bias = withBias ? h.rand([N], dtype) : null;
              const out = h.output([M, N], outDtype);
              h.cpu.linear(out.cpu, x.cpu, w.cpu, bias?.cpu ?? null, M);
              gpu.linear(out.gpu, x.gpu, w.gpu, bias?.gpu ?? null, M);
              await h.expectClose(out, `linear ${dtype}->${outDtype} M=${M} N=${N} K=${K} bias=${withBias}`, undefined, outDtype === 'f32' ? 1e-3 : undefined);
            }
          }
        }
      }
    });

    test('ropeWriteKv: neox and gptj, partial rotary, GQA, shuffled slots with padding; both kernels (thread per item, warp per head)', async () => {
      for (const [dtype, vecOn] of [['bf16', true], ['f16', true], ['f32', true], ['bf16', false], ['f32', false]] as const) {
        ropeVec.enabled = vecOn;
        for (const [style, headDim, rotaryDim, numHeads, numKvHeads] of [['neox', 128, 128, 8, 2], ['gptj', 64, 32, 4, 4], ['neox', 80, 40, 6, 1], ['neox', 64, 20, 4, 2]] as const) {
          const T = 11;
          const numSlots = 64;
          const p: RopeParams = { numHeads, numKvHeads, headDim, rotaryDim, style };
          const kvWidth = numKvHeads * headDim;
          const qkv = h.rand([T, (numHeads + 2 * numKvHeads) * headDim], dtype);
          const positions = h.ints([T], Int32Array.from({ length: T }, () => Math.floor(h.r() * 500)));
          const table = new Float32Array(512 * rotaryDim);
          for (let pos = 0; pos < 512; pos++) {
            for (let j = 0; j < rotaryDim / 2; j++) {
              const a = pos / 10000 ** ((2 * j) / rotaryDim);
              table[pos * rotaryDim + j] = Math.cos(a);
              table[pos * rotaryDim + rotaryDim / 2 + j] = Math.sin(a);
            }
          }
          const cosSin = h.fromF32([512, rotaryDim], table, 'f32');
          const slots = Int32Array.from(shuffledSlots(numSlots, T, h.r));
          slots[3] = -1;
          const slotMapping = h.ints([T], slots);
          const k = h.rand([numSlots, kvWidth], dtype);
          const v = h.rand([numSlots, kvWidth], dtype);
          const cpuCache: LayerKvCache = { k: k.cpu, v: v.cpu };
          const gpuCache: LayerKvCache = { k: k.gpu, v: v.gpu };
          h.cpu.ropeWriteKv(qkv.cpu, positions.cpu, cosSin.cpu, cpuCache, slotMapping.cpu, T, p);
          gpu.ropeWriteKv(qkv.gpu, positions.gpu, cosSin.gpu, gpuCache, slotMapping.gpu, T, p);
          const what = `ropeWriteKv ${dtype} ${style} D=${headDim} r=${rotaryDim} ${numHeads}/${numKvHeads}${vecOn ? '' : ' (warp per head)'}`;
          await h.expectClose(qkv, `${what}: q`);
          await h.expectClose(k, `${what}: k cache`);
          await h.expectClose(v, `${what}: v cache`, undefined, 0);
        }
      }
      ropeVec.enabled = true;
    });

    test('fromBytes converts on the host straight to the target dtype', async () => {
      const vals = h.uniform(37, 8);
      const f32Bytes = new Uint8Array(vals.buffer.slice(0));
      const bf = new Uint16Array(vals.length).map((_, i) => f32ToBf16(vals[i]!));
      const hf = new Uint16Array(vals.length).map((_, i) => f32ToF16(vals[i]!));
      const cases = [['F32', f32Bytes], ['BF16', new Uint8Array(bf.buffer)], ['F16', new Uint8Array(hf.buffer)]] as const;
      for (const [src, bytes] of cases) {
        for (const dtype of ['f32', 'bf16', 'f16'] as const) {
          const g = gpu.fromBytes([37], src, bytes, dtype);
          const c = h.cpu.fromBytes([37], src, bytes, 'f32');
          const want = cpuData(c) as Float32Array;
          const got = await gpu.downloadF32(g);
          gpu.free(g);
          const tol = dtype === 'f32' ? 0 : dtype === 'bf16' ? 1 / 128 : 1 / 1024;
          for (let i = 0; i < 37; i++) assert.ok(Math.abs(got[i]! - want[i]!) <= tol * Math.abs(want[i]!), `${src} -> ${dtype} element ${i}: ${got[i]} vs ${want[i]}`);
        }
      }
      const ints = gpu.fromBytes([3], 'I64', new Uint8Array(new BigInt64Array([5n, -2n, 7n]).buffer), 'i32');
      assert.deepEqual([...(await gpu.downloadI32(ints))], [5, -2, 7]);
      gpu.free(ints);
      assert.throws(() => gpu.fromBytes([5], 'BF16', new Uint8Array(8), 'bf16'), (e: unknown) => isPeregrineError(e) && /shape \[5\]/.test(e.message));
    });

    test('the allocator caches freed blocks and reports stats', () => {
      const before = gpu.memoryStats();
      const t = gpu.empty([1000, 1000], 'bf16');
      gpu.free(t);
      const t2 = gpu.empty([999, 1001], 'bf16');
      const s = gpu.memoryStats();
      assert.ok(s.numCacheHits > before.numCacheHits, 'same rounded size is served from the cache');
      assert.equal(s.allocatedBytes - before.allocatedBytes, 2 << 20);
      gpu.free(t2);
      assert.throws(() => (t2 as { ptr?: number }).ptr, (e: unknown) => isPeregrineError(e, 'PGN_ERR_INTERNAL') && /after free/.test(e.message));
    });

    test('ops reject mismatched dtypes with a message naming the tensor', () => {
      const a = h.rand([2, 8], 'bf16');
      const b = h.rand([2, 8], 'f16');
      const out = h.output([2, 8], 'bf16');
      assert.throws(() => gpu.add(out.gpu, a.gpu, b.gpu, 2), (e: unknown) => isPeregrineError(e, 'PGN_ERR_INTERNAL') && /\bb is f16/.test(e.message));
      assert.throws(() => gpu.add(out.gpu, a.gpu, a.gpu, 3), (e: unknown) => isPeregrineError(e, 'PGN_ERR_INTERNAL') && /fewer than 3 rows/.test(e.message));
    });

    test('a captured CUDA graph replays the ops on the inputs current at replay', async () => {
      const T = 4, H = 4096;
      const x = h.rand([T, H], 'bf16');
      const w = h.rand([H], 'bf16');
      const res = h.rand([T, H], 'bf16');
      const out = h.output([T, H], 'bf16');
      const sum = h.output([T, H], 'bf16');
      gpu.beginCapture();
      gpu.rmsNorm(out.gpu, x.gpu, w.gpu, 1e-6, T, null);
      gpu.add(sum.gpu, out.gpu, res.gpu, T);
      const graph = gpu.endCapture();
      for (let step = 0; step < 3; step++) {
        const fresh = h.fromF32([T, H], h.uniform(T * H, 2), 'bf16');
        gpu.copy(x.gpu, fresh.gpu, T);
        h.cpu.copy(x.cpu, fresh.cpu, T);
        gpu.replay(graph);
        h.cpu.rmsNorm(out.cpu, x.cpu, w.cpu, 1e-6, T, null);
        h.cpu.add(sum.cpu, out.cpu, res.cpu, T);
        await h.expectClose(sum, `graph replay ${step}`);
      }
      graph.dispose();
    });
  });
}

function shuffledSlots(numSlots: number, count: number, r: () => number): number[] {
  const a = Array.from({ length: numSlots }, (_, i) => i);
  for (let i = numSlots - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a.slice(0, count);
}
