// Host-side rules of the quantized decode GEMV (cuda-quant-gemv.ts), without a GPU: which shapes the kernel
// takes, its shared memory (the kernel lays it out the same way), and how many persistent blocks it launches.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { QGEMV_MAX_M, qgemvCan, qgemvChunkM, qgemvGrid, qgemvGroupShift, qgemvSharedBytes, qgemvStages, qgemvXStride, quantFastPolicy } from '../src/backends/cuda/cuda-quant-gemv.js';
import { dequant16Fits } from '../src/backends/cuda/cuda-quant-dequant.js';
import { igemmCan, igemmSharedBytes } from '../src/backends/cuda/cuda-quant-igemm.js';

const H100 = { fp8Cores: true, maxSharedBytesPerBlock: 227 * 1024 };
const A100 = { fp8Cores: false, maxSharedBytesPerBlock: 163 * 1024 };

test('x rows in shared memory: fp8 stride = 64 mod 128, int stride = 16 mod 128, never shorter than the row', () => {
  for (const K of [64, 128, 192, 640, 4096, 14336]) {
    const f = qgemvXStride('fp8', K), i = qgemvXStride('int4', K);
    assert.equal(f % 128, 64, `fp8 K=${K}`);
    assert.ok(f >= K && f < K + 128, `fp8 K=${K}: ${f}`);
    assert.equal(i % 128, 16, `int K=${K}`);
    assert.ok(i >= 2 * K && i < 2 * K + 128, `int K=${K}: ${i}`);
  }
  assert.equal(qgemvXStride('fp8', 4096), 4160);
  assert.equal(qgemvXStride('int8', 4096), 8208);
});

test('shared memory: rings (fp8 48 KiB, int 54 KiB: codes + a float a lane) + partial sums, token scales, zero slot + x rows', () => {
  assert.equal(qgemvSharedBytes('fp8', 1, 4096), 49152 + 8256 + 4160);
  assert.equal(qgemvSharedBytes('int4', 1, 14336), 55296 + 8256 + 28688);
  assert.equal(qgemvSharedBytes('int8', 3, 4096), 55296 + 8256 + 3 * 8208);
});

test('group shift: one group a row -> -1, else log2 of the steps a group spans, null where that is no power of two', () => {
  assert.equal(qgemvGroupShift('fp8', 4096, 4096), -1);
  assert.equal(qgemvGroupShift('int8', 4096, 4096), -1);
  assert.equal(qgemvGroupShift('int4', 4096, 128), 0);
  assert.equal(qgemvGroupShift('int4', 4096, 512), 2);
  assert.equal(qgemvGroupShift('int8', 4096, 128), 1);
  assert.equal(qgemvGroupShift('int8', 4096, 192), null);
  assert.equal(qgemvGroupShift('int4', 4096, 64), null);
});

test('shapes: tokens 1..8, K in whole steps, int groups in whole steps, fp8 on sm_89+, x that fits', () => {
  const ok = (kind: 'fp8' | 'int8' | 'int4', M: number, K: number, groupSize: number, dev = H100) => qgemvCan({ kind, M, K, groupSize }, dev);
  assert.equal(QGEMV_MAX_M, 8);
  assert.ok(ok('fp8', 1, 4096, 4096));
  assert.ok(ok('fp8', 8, 14336, 14336), 'fp8 x of 8 x 14336 bytes fits one H100 block');
  assert.ok(!ok('fp8', 0, 4096, 4096) && !ok('fp8', 9, 4096, 4096) && !ok('fp8', 1.5, 4096, 4096));
  assert.ok(!ok('fp8', 1, 4000, 4000), 'K % 64');
  assert.ok(!ok('fp8', 1, 4096, 4096, A100), 'no FP8 tensor cores on sm_80');
  assert.ok(ok('int4', 1, 4096, 4096, A100), 'int formats run on sm_80');
  assert.ok(ok('int8', 2, 640, 64) && !ok('int8', 2, 640, 32) && !ok('int8', 2, 640, 192), 'int8 groups of 2^n whole 64-k steps');
  assert.ok(ok('int4', 2, 640, 128) && !ok('int4', 2, 640, 64) && !ok('int4', 2, 576, 64), 'int4: K and groups of whole 128-k steps');
  assert.ok(ok('int4', 8, 14336, 128), 'int x of 8 x 14336 halves runs in chunks');
  assert.equal(qgemvChunkM('int4', 14336, H100.maxSharedBytesPerBlock), 5, 'x of 5 x 14336 halves fits a block');
  assert.equal(qgemvChunkM('int8', 4096, H100.maxSharedBytesPerBlock), 8);
  assert.equal(qgemvChunkM('fp8', 14336, H100.maxSharedBytesPerBlock), 8, 'fp8 x is one byte a value');
  assert.equal(qgemvChunkM('int4', 65536, H100.maxSharedBytesPerBlock), 1);
  assert.ok(!ok('int4', 1, 131072, 128), 'not even one token of x fits');
});

test('grid: persistent blocks, up to 3 an SM as shared memory allows, each with the same number of tiles', () => {
  const sms = 132, max = H100.maxSharedBytesPerBlock;
  assert.equal(qgemvGrid(4096, qgemvSharedBytes('fp8', 1, 4096), sms, max), 256, 'fewer tiles than block slots');
  // 1792 tiles over <= 396 resident blocks: 5 tiles each -> 359 blocks (not 396 with 4 or 5)
  assert.equal(qgemvGrid(28672, qgemvSharedBytes('fp8', 1, 4096), sms, max), 359);
  assert.equal(qgemvGrid(28672, qgemvSharedBytes('int4', 1, 14336), sms, max), 256, '7 tiles each over <= 264 blocks');
  assert.equal(qgemvGrid(28672, qgemvSharedBytes('int4', 5, 14336), sms, max), 128, '14 tiles each over <= 132 blocks');
  assert.equal(qgemvGrid(1, qgemvSharedBytes('int8', 1, 64), sms, max), 1);
});

test('dense kind (bf16 / f16 weights, PEREGRINE_GEMV=ring): 32-k steps, x in halves at 64 mod 128, no scale ring', () => {
  for (const K of [32, 96, 4096, 14336]) {
    const d = qgemvXStride('dense', K);
    assert.equal(d % 128, 64, `dense K=${K}`);
    assert.ok(d >= 2 * K && d < 2 * K + 128, `dense K=${K}: ${d}`);
  }
  assert.equal(qgemvSharedBytes('dense', 1, 4096), 49152 + 8256 + 8256, 'the 48 KiB ring of weights only');
  assert.equal(qgemvGroupShift('dense', 4096, 4096), -1);
  assert.ok(qgemvCan({ kind: 'dense', M: 8, K: 4096, groupSize: 4096 }, A100), 'no FP8 cores needed');
  assert.ok(qgemvCan({ kind: 'dense', M: 1, K: 32, groupSize: 32 }, H100) && !qgemvCan({ kind: 'dense', M: 1, K: 48, groupSize: 48 }, H100), 'K % 32');
  assert.equal(qgemvChunkM('dense', 14336, H100.maxSharedBytesPerBlock), 6, 'x of 6 x 14336 halves fits an H100 block (down_proj)');
  assert.equal(qgemvChunkM('dense', 4096, H100.maxSharedBytesPerBlock), 8);
});

test('qgemv ring depth: fp8 rows of K >= 8192 take the 10-step ring (its shared memory too), everything else 6; PEREGRINE_QGEMV_FP8_STAGES forces', () => {
  assert.equal(qgemvStages('fp8', 4096), 6);
  assert.equal(qgemvStages('fp8', 8192), 10);
  assert.equal(qgemvStages('fp8', 14336), 10);
  assert.equal(qgemvStages('int4', 14336), 6);
  assert.equal(qgemvStages('dense', 14336), 6);
  assert.equal(qgemvSharedBytes('fp8', 1, 14336), 81920 + 8256 + 14400, 'down_proj: 8 warps x 10 steps x 1 KiB');
  const saved = { ...quantFastPolicy };
  try {
    quantFastPolicy.fp8Stages = 6;
    assert.equal(qgemvStages('fp8', 14336), 6);
    quantFastPolicy.fp8Stages = 10;
    assert.equal(qgemvStages('fp8', 4096), 10);
    assert.equal(qgemvStages('int8', 4096), 6);
    assert.equal(qgemvStages('int4', 4096), 6);
    assert.equal(qgemvStages('dense', 4096), 6);
    assert.equal(qgemvSharedBytes('int4', 1, 4096), 8 * 6 * 1152 + 8256 + 8208, 'int4: 1 KiB of codes + 128 bytes of scales a warp and step');
  } finally {
    Object.assign(quantFastPolicy, saved);
  }
});

test('dequantizing path: a thread per 16 bytes of codes where whole units fit K and the groups, else a thread per word', () => {
  assert.ok(dequant16Fits({ kind: 'int4', groupSize: 128 }, 4096, 0x1000));
  assert.ok(!dequant16Fits({ kind: 'int4', groupSize: 16 }, 4096, 0x1000), 'int4 units are 32 values: groups of 16 split them');
  assert.ok(!dequant16Fits({ kind: 'int4', groupSize: 128 }, 4112, 0x1000), 'K % 32');
  assert.ok(dequant16Fits({ kind: 'int8', groupSize: 4096 }, 4096, 0x1000) && !dequant16Fits({ kind: 'int8', groupSize: 24 }, 96, 0x1000));
  assert.ok(!dequant16Fits({ kind: 'fp8', groupSize: 72 }, 72, 0x1000) && dequant16Fits({ kind: 'fp8', groupSize: 80 }, 80, 0x1000), 'fp8: K % 16, any group');
  assert.ok(!dequant16Fits({ kind: 'int4', groupSize: 128 }, 4096, 0x1008), 'codes 16-byte aligned');
});

test('tiled int GEMM: int8 / int4 with K and groups in whole 64-k chunks; its shared memory', () => {
  assert.ok(igemmCan('int4', 4096, 128) && igemmCan('int8', 4096, 4096) && igemmCan('int4', 640, 64));
  assert.ok(!igemmCan('fp8', 4096, 4096), 'fp8 has its own paths');
  assert.ok(!igemmCan('int4', 4096, 32), 'a chunk would span groups');
  assert.ok(!igemmCan('int8', 4128, 4128), 'K % 64');
  assert.equal(igemmSharedBytes('int4'), 2 * 64 * 144 + 2 * 128 * 32 + 2048 + 128 * 144);
  assert.equal(igemmSharedBytes('int8'), 2 * 64 * 144 + 2 * 128 * 64 + 2048 + 128 * 144);
});
