/**
 * The host-side pieces of the CUDA backend, which run without a GPU: the library finder
 * and its error, dtype conversion for uploads and downloads, allocation rounding, the
 * decode split plan, and availability checks that never throw.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isPeregrineError } from '../../src/errors.js';
import { roundAllocSize } from '../../src/backends/cuda/allocator.js';
import { decodeLaunch, decodePlan, decodeTcBlocksPerSm, decodeTcHeadBlocks, decodeTcSharedBytes, decodeTcWanted, prefillSharedBytes } from '../../src/backends/cuda/cuda-attention.js';
import { CudaBackend } from '../../src/backends/cuda/cuda-backend.js';
import { ropeLaunch } from '../../src/backends/cuda/cuda-ops.js';
import { SILU_CLUSTER, siluFp8Forced, siluFp8Launch } from '../../src/backends/cuda/cuda-quant-norm.js';
import { convertStorage, decodeToF32, encodeF32 } from '../../src/backends/cuda/host-convert.js';
import { CUBLASLT, findLibrary, librarySearchDirs } from '../../src/backends/cuda/library-finder.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../../src/weights/dtype.js';
import { withEnv } from '../helpers/env.js';

const emptyEnv = (extra: Record<string, string>): NodeJS.ProcessEnv => ({ HOME: '/nonexistent', ...extra });

test('findLibrary prefers PEREGRINE_CUDA_LIBS and the newest accepted major version', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pgn-libs-'));
  writeFileSync(join(dir, 'libcublasLt.so.12'), '');
  writeFileSync(join(dir, 'libcublasLt.so.13'), '');
  const other = mkdtempSync(join(tmpdir(), 'pgn-libs-'));
  writeFileSync(join(other, 'libcublasLt.so.13'), '');
  assert.equal(findLibrary(CUBLASLT, emptyEnv({ PEREGRINE_CUDA_LIBS: dir, LD_LIBRARY_PATH: other })), join(dir, 'libcublasLt.so.13'));
  assert.equal(findLibrary(CUBLASLT, emptyEnv({ PEREGRINE_CUDA_LIBS: '/nope', LD_LIBRARY_PATH: other })), join(other, 'libcublasLt.so.13'));
});

test('findLibrary searches python nvidia/*/lib folders of a virtualenv', () => {
  const venv = mkdtempSync(join(tmpdir(), 'pgn-venv-'));
  const lib = join(venv, 'lib', 'python3.12', 'site-packages', 'nvidia', 'cu13', 'lib');
  mkdirSync(lib, { recursive: true });
  writeFileSync(join(lib, 'libpgn-test-only.so.13'), '');
  assert.ok(librarySearchDirs(emptyEnv({ VIRTUAL_ENV: venv })).includes(lib));
  const spec = { stem: 'libpgn-test-only.so', versions: [13], what: 'a test library' };
  assert.equal(findLibrary(spec, emptyEnv({ VIRTUAL_ENV: venv })), join(lib, 'libpgn-test-only.so.13'));
});

test('a missing library is PGN_ERR_LIBRARY_NOT_FOUND naming every folder searched', () => {
  const env = emptyEnv({ PEREGRINE_CUDA_LIBS: '/pgn/custom/libs', LD_LIBRARY_PATH: '/pgn/ld/path' });
  const spec = { stem: 'libpgn-not-a-library.so', versions: [13], what: 'a test library' };
  assert.throws(() => findLibrary(spec, env), (e: unknown) => {
    if (!isPeregrineError(e, 'PGN_ERR_LIBRARY_NOT_FOUND')) return false;
    const searched = e.details.searched as string[];
    return e.message.includes('libpgn-not-a-library.so') && e.message.includes('/pgn/custom/libs') && e.message.includes('/pgn/ld/path') &&
      e.message.includes('/usr/local/cuda/lib64') && e.message.includes('PEREGRINE_CUDA_LIBS') && searched.includes('/pgn/ld/path');
  });
});

test('uploads pass same-dtype bytes through and convert others straight to the target', () => {
  const vals = Float32Array.from([1.5, -2.25, 3e-3, 65504, -0.0, 1 / 3]);
  const f32Bytes = new Uint8Array(vals.buffer);
  assert.equal(convertStorage('F32', f32Bytes, 'f32'), f32Bytes, 'no copy when source == target');
  const bf = new Uint16Array(convertStorage('F32', f32Bytes, 'bf16').buffer);
  assert.deepEqual([...bf], [...vals].map((v) => f32ToBf16(v)));
  const bfBytes = new Uint8Array(bf.buffer);
  assert.equal(convertStorage('BF16', bfBytes, 'bf16'), bfBytes);
  const half = new Uint16Array(convertStorage('BF16', bfBytes, 'f16').buffer);
  assert.deepEqual([...half], [...bf].map((b) => f32ToF16(bf16ToF32(b))));
  // unaligned source bytes (safetensors data at an odd offset)
  const shifted = new Uint8Array(f32Bytes.byteLength + 1);
  shifted.set(f32Bytes, 1);
  assert.deepEqual([...decodeToF32(convertStorage('F32', shifted.subarray(1), 'f32'), 'f32')], [...vals]);
  assert.deepEqual([...decodeToF32(encodeF32(vals, 'f16'), 'f16')], [...vals].map((v) => f16ToF32(f32ToF16(v))));
  assert.throws(() => convertStorage('F8_E4M3', new Uint8Array(4), 'bf16'), (e: unknown) => isPeregrineError(e, 'PGN_ERR_WEIGHTS_DTYPE') && /F8_E4M3/.test(e.message));
  assert.throws(() => convertStorage('F32', new Uint8Array(6), 'f32'), (e: unknown) => isPeregrineError(e, 'PGN_ERR_WEIGHTS_SHAPE') && /6 bytes/.test(e.message));
});

test('allocation sizes round to 512 B below 1 MiB and to 2 MiB above', () => {
  assert.equal(roundAllocSize(0), 512);
  assert.equal(roundAllocSize(513), 1024);
  assert.equal(roundAllocSize(1 << 20), 1 << 20);
  assert.equal(roundAllocSize((1 << 20) + 1), 2 << 20);
  assert.equal(roundAllocSize((5 << 20) + 3), 6 << 20);
});

test('decode splits fill the GPU at small batches and fit the workspace', async () => {
  const llama8b = (numSeqs: number, ctx: number) => decodePlan(numSeqs, 32, 8, 128, ctx, 0, 132, 32 << 20);
  const b1 = llama8b(1, 8192);
  assert.equal(b1.hpb, 4);
  assert.equal(b1.headGroups, 1);
  assert.ok(b1.numSplits >= 32 && b1.numSplits <= 128, `batch 1 splits ${b1.numSplits}`);
  assert.equal(llama8b(256, 8192).numSplits, 1, 'a large batch fills the GPU unsplit');
  assert.equal(llama8b(1, 60).numSplits, 1, 'short contexts are not split');
  assert.equal(llama8b(1, 1024).numSplits, 16, 'at least 64 keys a split');
  const mqa = decodePlan(1, 12, 1, 64, 4096, 0, 132, 32 << 20);
  assert.deepEqual([mqa.hpb, mqa.headGroups], [8, 2]);
  const tight = decodePlan(64, 32, 8, 128, 32768, 0, 132, 2 << 20);
  assert.ok(tight.partialOBytes + 64 * 32 * tight.numSplits * 8 <= 2 << 20, 'partials fit the workspace');
  assert.equal(prefillSharedBytes(128, 2, 4), (64 + 128) * 136 * 2);
  assert.equal(prefillSharedBytes(256, 2, 8), (128 + 64) * 264 * 2);
  assert.equal(prefillSharedBytes(128, 2, 8, true), (128 + 2 * 64) * 136 * 2 + 2 * 64 * 128);
});

test('tensor-core decode: GQA groups 2-16 of head sizes 64-128, from 2 waves of blocks (fp8 caches 0.75) unless PEREGRINE_DECODE_ATTN says; its shared memory', async () => {
  await withEnv('PEREGRINE_DECODE_ATTN', undefined, () => {
    assert.equal(decodeTcWanted(128, 32, 8, 128, 132, 3, false), true, 'bf16 cache, batch 128 x 8 KV heads: 1024 blocks >= 2 x 396');
    assert.equal(decodeTcWanted(64, 32, 8, 128, 132, 3, false), false, 'bf16 cache, batch 64: 512 blocks, 1.3 waves');
    assert.equal(decodeTcWanted(64, 32, 8, 128, 132, 5, true), true, 'fp8 cache, batch 64: 512 blocks >= 0.75 x 660');
    assert.equal(decodeTcWanted(32, 32, 8, 128, 132, 5, true), false, 'fp8 cache, batch 32');
    assert.equal(decodeTcWanted(1024, 32, 32, 128, 132, 3, false), false, 'MHA');
    assert.equal(decodeTcWanted(1024, 64, 2, 128, 132, 3, false), false, 'a group of 32');
    assert.equal(decodeTcWanted(1024, 32, 8, 256, 132, 3, false), false, 'head size 256');
  });
  await withEnv('PEREGRINE_DECODE_ATTN', 'tc', () => {
    assert.equal(decodeTcWanted(1, 32, 8, 128, 132, 3, false), true);
    assert.equal(decodeTcWanted(1, 8, 8, 128, 132, 3, false), false, 'tc only where it applies');
  });
  await withEnv('PEREGRINE_DECODE_ATTN', 'simt', () => assert.equal(decodeTcWanted(256, 32, 8, 128, 132, 3, false), false));
  assert.equal(decodePlan(256, 32, 8, 128, 4096, 0, 132, 32 << 20, 3).hpb, 4, 'the whole group a block');
  assert.equal(decodePlan(1, 48, 4, 128, 4096, 0, 132, 32 << 20, 3).headGroups, 1);
  assert.equal(decodeTcSharedBytes(128, 2, false, 1), 4 * 2 * 2 * 16 * 136 * 2, 'bf16 rings: D + 8 elements a row');
  assert.equal(decodeTcSharedBytes(128, 2, true, 1), 4 * 2 * 2 * 16 * 144, 'fp8 rings: D + 16 bytes a row');
  assert.equal(decodeTcSharedBytes(64, 2, true, 2), 4 * 2 * 2 * 16 * 80, 'room for the f32 merge [4][16][64]');
  assert.equal(decodeTcSharedBytes(128, 2, true, 2), 4 * 2 * 2 * 16 * 144);
  assert.ok(decodeTcSharedBytes(64, 2, true, 1) >= 4 * 8 * 64 * 4);
  assert.deepEqual([decodeTcHeadBlocks(4), decodeTcHeadBlocks(8), decodeTcHeadBlocks(9), decodeTcHeadBlocks(16)], [1, 1, 2, 2]);
  assert.equal(decodeTcBlocksPerSm(decodeTcSharedBytes(128, 2, true, 1), true, 1), 5, 'fp8, up to 8 heads: its launch bound');
  assert.equal(decodeTcBlocksPerSm(decodeTcSharedBytes(128, 2, true, 2), true, 2), 3);
  assert.equal(decodeTcBlocksPerSm(decodeTcSharedBytes(128, 2, false, 1), false, 1), 3, 'bf16: ~70 KB a block');
  assert.deepEqual([163, 99].map((kib) => decodeTcBlocksPerSm(decodeTcSharedBytes(128, 2, true, 1), true, 1, kib << 10)), [4, 2], 'fp8 on an A100 / sm_89 SM');
  assert.deepEqual([163, 99].map((kib) => decodeTcBlocksPerSm(decodeTcSharedBytes(128, 2, false, 1), false, 1, kib << 10)), [2, 1], 'bf16 on an A100 / sm_89 SM');
  const shape = { numHeads: 32, numKvHeads: 8, headDim: 128, maxSeqlenK: 512, window: 0, numSMs: 132, workspaceBytes: 32 << 20, elemBytes: 2, maxSharedBytesPerBlock: 227 << 10 };
  const big = decodeLaunch({ ...shape, numSeqs: 256, fp8: true });
  assert.deepEqual([big.tc, big.headBlocks, big.plan.hpb, big.plan.numSplits], [true, 1, 4, 1]);
  assert.equal(decodeLaunch({ ...shape, numSeqs: 256, fp8: false, maxSharedBytesPerBlock: 48 << 10 }).tc, false, 'not where its shared memory does not fit');
  const small = decodeLaunch({ ...shape, numSeqs: 1, fp8: false });
  assert.deepEqual([small.tc, small.plan.numSplits], [false, 8]);
});

test('RoPE: a thread per 8 elements where rows split into packs (items of the 8B shape: 32 x 16 + 8 x 32), else a warp per head', () => {
  const llama = { numHeads: 32, numKvHeads: 8, headDim: 128, rotaryDim: 128, style: 'neox' as const };
  assert.deepEqual(ropeLaunch(llama, true, true), { vec: true, blocksPerToken: 6 }, '512 q items + 256 k / v items');
  assert.deepEqual(ropeLaunch(llama, false, true), { vec: true, blocksPerToken: 2 }, 'no rotation: k and v copies only');
  assert.deepEqual(ropeLaunch({ ...llama, rotaryDim: 32 }, true, true), { vec: true, blocksPerToken: 3 }, 'partial rotary: 128 + 256 items');
  assert.deepEqual(ropeLaunch({ ...llama, rotaryDim: 20 }, true, true), { vec: false, blocksPerToken: 10 }, 'rotary dims not in packs of 8');
  assert.deepEqual(ropeLaunch({ ...llama, headDim: 100, rotaryDim: 100 }, true, true).vec, false, 'head size not in packs of 8');
  assert.deepEqual(ropeLaunch(llama, true, false).vec, false, 'unaligned rows');
});

test('silu_mul_fp8: a row over a cluster of 8 blocks for few rows (sm_90+), 2 packs a thread in up to 1024 threads below 4 rows an SM, 8 packs in up to 256 from there', () => {
  // without clusters (sm_80 / sm_89)
  assert.deepEqual(siluFp8Launch(14336, 1, 132), { kernel: 'silu_mul_fp8', threads: 1024, blocks: 1 });
  assert.deepEqual(siluFp8Launch(14336, 527, 132), { kernel: 'silu_mul_fp8', threads: 1024, blocks: 527 });
  assert.deepEqual(siluFp8Launch(14336, 528, 132), { kernel: 'silu_mul_fp8_k8', threads: 224, blocks: 528 });
  assert.deepEqual(siluFp8Launch(1000, 8192, 132), { kernel: 'silu_mul_fp8_k8', threads: 32, blocks: 8192 });
  assert.deepEqual(siluFp8Launch(1000, 8, 132), { kernel: 'silu_mul_fp8', threads: 128, blocks: 8 });
  // with clusters: 1792 columns a block of the 14336 (224 threads), up to one block an SM
  assert.deepEqual(siluFp8Launch(14336, 1, 132, true), { kernel: 'silu_mul_fp8_cl', threads: 224, blocks: SILU_CLUSTER });
  assert.deepEqual(siluFp8Launch(14336, 16, 132, true), { kernel: 'silu_mul_fp8_cl', threads: 224, blocks: 16 * SILU_CLUSTER });
  assert.deepEqual(siluFp8Launch(14336, 17, 132, true), { kernel: 'silu_mul_fp8', threads: 1024, blocks: 17 });
  assert.deepEqual(siluFp8Launch(140000, 1, 132, true), { kernel: 'silu_mul_fp8_cl', threads: 1024, blocks: SILU_CLUSTER }, 'wide rows: more than a pack a thread');
  assert.deepEqual(siluFp8Launch(14336, 528, 132, true).kernel, 'silu_mul_fp8_k8');
  siluFp8Forced.variant = 'many';
  try {
    assert.equal(siluFp8Launch(14336, 1, 132).kernel, 'silu_mul_fp8_k8', 'forced');
    siluFp8Forced.variant = 'cluster';
    assert.deepEqual(siluFp8Launch(1000, 600, 132, true), { kernel: 'silu_mul_fp8_cl', threads: 32, blocks: 600 * SILU_CLUSTER }, 'forced');
  } finally {
    siluFp8Forced.variant = null;
  }
});

test('isAvailable answers without throwing; create fails with a typed error when it is false', () => {
  const ok = CudaBackend.isAvailable();
  assert.equal(typeof ok, 'boolean');
  if (!ok) {
    assert.equal(typeof CudaBackend.unavailableReason(), 'string');
    assert.throws(() => CudaBackend.create(), (e: unknown) => isPeregrineError(e, 'PGN_ERR_DEVICE_UNAVAILABLE') && /CUDA is not available/.test(e.message));
  }
});
