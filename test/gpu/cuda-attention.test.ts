/**
 * CUDA paged attention against the CPU reference: prefill, chunked prefill (earlier
 * context in the cache) and decode (split along the keys into 2..128 splits: eager twice,
 * captured and replayed twice, then eager again), every supported head size, MHA/GQA/MQA, sliding window, ALiBi, soft-capping,
 * block tables drawn from a shuffled pool. Without a CUDA device the suite skips (the split
 * plan's host-side rules are tested anyway).
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { AttentionParams } from '../../src/backends/backend.js';
import { decodePlan, decodeTcApplies } from '../../src/backends/cuda/cuda-attention.js';
import { isPeregrineError } from '../../src/errors.js';
import { ATTENTION_TOL, checkGraphRuns, pagedBatch, type AttentionCase } from './attention-cases.js';
import { withEnv } from '../helpers/env.js';
import { Harness, openCuda, SEED, type Pair } from './cuda-harness.js';

const { gpu, reason } = openCuda();
/** the CUDA backend's default attention workspace */
const WORKSPACE_BYTES = 32 << 20;

test('decode plan: no split once the unsplit grid fills half the block slots', () => {
  // Llama-3.1-8B: 32 heads over 8 KV heads, 4 heads a block; 132 SMs of 4 blocks = 528 slots
  const llama8b = (numSeqs: number, ctx: number) => decodePlan(numSeqs, 32, 8, 128, ctx, 0, 132, WORKSPACE_BYTES).numSplits;
  assert.equal(llama8b(64, 512), 1, 'batch 64: 512 blocks fill 528 slots unsplit');
  assert.equal(llama8b(33, 512), 2, '264 blocks are half the slots: still split');
  assert.equal(llama8b(34, 512), 1);
  assert.equal(llama8b(1, 512), 8, 'batch 1: 64 keys a split');
  assert.equal(llama8b(1, 8192), 66, 'batch 1, long context: the slots');
  assert.equal(llama8b(25, 4096), 3);
  // 8 heads a block hold 3 blocks an SM: 396 slots
  const mqa = (numSeqs: number) => decodePlan(numSeqs, 12, 1, 64, 1 << 16, 0, 132, WORKSPACE_BYTES).numSplits;
  assert.equal(mqa(1), 128, 'MQA at batch 1: the most splits');
  assert.equal(mqa(99), 2, '198 blocks: half the slots');
  assert.equal(mqa(100), 1);
});

interface Case extends AttentionCase {
  readonly blockSize?: number;
  readonly alibi?: boolean;
  readonly softcap?: number;
}

if (!gpu) {
  test('CUDA attention', (t) => t.skip(`no CUDA device: ${reason}`));
} else {
  const h = new Harness(gpu, SEED + 1);
  after(() => {
    h.dispose();
    gpu.dispose();
  });

  async function check(c: Case): Promise<void> {
    const { headDim, numHeads, numKvHeads, seqs } = c;
    const dtype = c.dtype ?? 'bf16';
    const blockSize = c.blockSize ?? 16;
    const batch = pagedBatch(h, c, blockSize);
    const { numBlocks, numTokens } = batch;
    const kvWidth = numKvHeads * headDim;
    const kCache = h.rand([numBlocks * blockSize, kvWidth], dtype);
    const vCache = h.rand([numBlocks * blockSize, kvWidth], dtype);
    const qkv = h.rand([numTokens, (numHeads + 2 * numKvHeads) * headDim], dtype);
    const out = h.output([numTokens, numHeads * headDim], dtype);
    const slopes = c.alibi ? h.fromF32([numHeads], Float32Array.from({ length: numHeads }, (_, i) => 2 ** (-8 * (i + 1) / numHeads)), 'f32') : null;
    const params = (t: (p: Pair) => Pair['cpu']): AttentionParams => ({
      numHeads, numKvHeads, headDim, blockSize, scale: 1 / Math.sqrt(headDim),
      slidingWindow: c.slidingWindow ?? null, logitSoftcap: c.softcap ?? null, alibiSlopes: slopes ? t(slopes) : null,
    });
    h.cpu.attention(out.cpu, qkv.cpu, { k: kCache.cpu, v: vCache.cpu }, batch.meta((p) => p.cpu), params((p) => p.cpu));
    const gpuMeta = batch.meta((p) => p.gpu), gpuParams = params((p) => p.gpu);
    const launch = () => gpu!.attention(out.gpu, qkv.gpu, { k: kCache.gpu, v: vCache.gpu }, gpuMeta, gpuParams);
    const what = `attention ${dtype} D=${headDim} heads ${numHeads}/${numKvHeads} seqs ${JSON.stringify(seqs)}` +
      `${c.slidingWindow ? ` window ${c.slidingWindow}` : ''}${c.alibi ? ' alibi' : ''}${c.softcap ? ` softcap ${c.softcap}` : ''}` +
      `${c.maxSeqlenK ? ` maxSeqlenK ${c.maxSeqlenK}` : ''}`;
    const tol = ATTENTION_TOL[dtype];
    if (!c.replays) {
      launch();
      return h.expectClose(out, what, undefined, tol);
    }
    const runs = ['eager', 'eager again', 'graph replay', 'graph replay again', 'eager after the graph'];
    await checkGraphRuns(gpu!, launch, out, runs, (run) => h.expectClose(out, `${what} (${run})`, undefined, tol));
  }

  describe(`CUDA attention on ${gpu.props.name} (seed ${SEED + 1})`, () => {
    test('prefill and chunked prefill, every head size, MHA/GQA/MQA', async () => {
      const seqs = [[37, 37], [70, 150], [1, 20], [130, 200]] as const;
      for (const headDim of [64, 80, 96, 128, 256]) {
        for (const [numHeads, numKvHeads] of [[4, 4], [8, 2], [6, 1]] as const) {
          await check({ headDim, numHeads, numKvHeads, seqs });
        }
      }
      await check({ headDim: 128, numHeads: 8, numKvHeads: 2, seqs, dtype: 'f16' });
      await check({ headDim: 64, numHeads: 4, numKvHeads: 2, seqs: [[100, 300]], blockSize: 32 });
      // prompts of 512+ queries run the 8-warp kernel
      await check({ headDim: 64, numHeads: 4, numKvHeads: 2, seqs: [[600, 650], [3, 3]] });
      // a mixed step: its leading decodes run on the decode kernels (CUDA-core, and tensor-core for GQA), the rest
      // (a decode among them) on the prefill kernel
      const mixed = [[1, 20], [1, 300], [1, 2100], [37, 37], [1, 999], [70, 150], [600, 700]] as const;
      for (const [numHeads, numKvHeads] of [[4, 4], [8, 2], [32, 8]] as const) await check({ headDim: 128, numHeads, numKvHeads, seqs: mixed });
      await check({ headDim: 96, numHeads: 6, numKvHeads: 1, seqs: mixed, slidingWindow: 64, dtype: 'f16' });
      await check({ headDim: 256, numHeads: 2, numKvHeads: 1, seqs: [[530, 530]], slidingWindow: 200 });
    });

    test('prefill with sliding window, ALiBi and soft-capping', async () => {
      const seqs = [[90, 90], [65, 210]] as const;
      await check({ headDim: 128, numHeads: 8, numKvHeads: 2, seqs, slidingWindow: 40 });
      await check({ headDim: 64, numHeads: 8, numKvHeads: 8, seqs, alibi: true });
      await check({ headDim: 256, numHeads: 4, numKvHeads: 2, seqs, softcap: 50, slidingWindow: 64 });
    });

    test('decode over the paged cache, split along long contexts', async () => {
      const seqs = [[1, 1], [1, 17], [1, 300], [1, 2100], [1, 999]] as const;
      for (const headDim of [64, 80, 96, 128, 256]) {
        for (const [numHeads, numKvHeads] of [[4, 4], [8, 2], [32, 8], [12, 1], [6, 2]] as const) {
          await check({ headDim, numHeads, numKvHeads, seqs });
        }
      }
      await check({ headDim: 128, numHeads: 32, numKvHeads: 8, seqs: [[1, 4000]], dtype: 'f16' });
      await check({ headDim: 128, numHeads: 8, numKvHeads: 2, seqs, slidingWindow: 100 });
      await check({ headDim: 64, numHeads: 8, numKvHeads: 8, seqs, alibi: true });
      await check({ headDim: 256, numHeads: 8, numKvHeads: 4, seqs, softcap: 30 });
    });

    test('split decode: several split counts, eager and graph replays, each twice', async () => {
      const cases: Case[] = [
        { headDim: 128, numHeads: 32, numKvHeads: 8, seqs: [[1, 150]], maxSeqlenK: 100 },
        { headDim: 128, numHeads: 32, numKvHeads: 8, seqs: [[1, 150]], maxSeqlenK: 512 },
        { headDim: 128, numHeads: 32, numKvHeads: 8, seqs: [[1, 5000], [1, 3]], maxSeqlenK: 8192 },
        { headDim: 64, numHeads: 12, numKvHeads: 1, seqs: [[1, 3000]], maxSeqlenK: 1 << 16 },
        { headDim: 256, numHeads: 8, numKvHeads: 8, seqs: [[1, 700], [1, 1], [1, 90]], maxSeqlenK: 4096, dtype: 'f16' },
        { headDim: 96, numHeads: 6, numKvHeads: 3, seqs: [[1, 999], [1, 400]], maxSeqlenK: 2048, slidingWindow: 300 },
      ];
      const splits = new Set<number>();
      for (const c of cases) {
        splits.add(decodePlan(c.seqs.length, c.numHeads, c.numKvHeads, c.headDim, c.maxSeqlenK!, c.slidingWindow ?? 0, gpu.props.numSMs, WORKSPACE_BYTES).numSplits);
        await check({ ...c, replays: true });
      }
      assert.ok(splits.has(2) && splits.has(128) && splits.size >= 5, `split counts ${[...splits].join(', ')}`);
    });

    test('prefill, head size 128: MHA/GQA/MQA, 4 and 8 warps, tile-sized and chunked prompts, window, ALiBi, soft-capping, f16, a mixed step', async () => {
      const seqs = [[37, 37], [1, 1], [20, 90], [64, 64], [130, 200]] as const;
      for (const [numHeads, numKvHeads] of [[4, 4], [8, 2], [6, 1]] as const) {
        await check({ headDim: 128, numHeads, numKvHeads, seqs });
      }
      await check({ headDim: 128, numHeads: 8, numKvHeads: 2, seqs: [[600, 650], [3, 3], [129, 129]] }); // 8 warps
      await check({ headDim: 128, numHeads: 8, numKvHeads: 2, seqs, dtype: 'f16' });
      await check({ headDim: 128, numHeads: 4, numKvHeads: 2, seqs: [[100, 300]], blockSize: 32 });
      await check({ headDim: 128, numHeads: 8, numKvHeads: 2, seqs, slidingWindow: 40 });
      await check({ headDim: 128, numHeads: 8, numKvHeads: 8, seqs, alibi: true });
      await check({ headDim: 128, numHeads: 4, numKvHeads: 2, seqs: [[530, 530]], softcap: 50, slidingWindow: 64 });
      await check({ headDim: 128, numHeads: 32, numKvHeads: 8, seqs: [[1, 300], [1, 40], [257, 257], [1, 999], [33, 100]] });
    });

    test('tensor-core GQA decode (PEREGRINE_DECODE_ATTN=tc): head sizes 64-128, groups 2-16, window, ALiBi, soft-capping, f16, splits with graph replays', async () => {
      await withEnv('PEREGRINE_DECODE_ATTN', 'tc', async () => {
        const seqs = [[1, 1], [1, 17], [1, 300], [1, 2100], [1, 999]] as const;
        for (const headDim of [64, 80, 96, 128]) {
          for (const [numHeads, numKvHeads] of [[8, 2], [32, 8], [6, 3], [12, 1], [16, 1]] as const) {
            assert.ok(decodeTcApplies(numHeads, numKvHeads, headDim));
            await check({ headDim, numHeads, numKvHeads, seqs });
          }
        }
        await check({ headDim: 128, numHeads: 32, numKvHeads: 8, seqs: [[1, 4000], [1, 5]], dtype: 'f16' });
        await check({ headDim: 128, numHeads: 8, numKvHeads: 2, seqs, slidingWindow: 100 });
        await check({ headDim: 128, numHeads: 8, numKvHeads: 2, seqs, alibi: true, softcap: 30 });
        await check({ headDim: 64, numHeads: 12, numKvHeads: 4, seqs, alibi: true, blockSize: 32 });
        for (const c of [
          { headDim: 128, numHeads: 32, numKvHeads: 8, seqs: [[1, 150]], maxSeqlenK: 512 },
          { headDim: 128, numHeads: 32, numKvHeads: 8, seqs: [[1, 5000], [1, 3]], maxSeqlenK: 8192 },
          { headDim: 96, numHeads: 6, numKvHeads: 3, seqs: [[1, 999], [1, 400]], maxSeqlenK: 2048, slidingWindow: 300 },
        ] satisfies Case[]) {
          await check({ ...c, replays: true });
        }
      });
    });

    test('other head sizes run the generic kernel: prefill, decode, window, ALiBi, softcap', async () => {
      const prefill = [[37, 37], [20, 90], [1, 20]] as const;
      const decode = [[1, 1], [1, 300], [1, 77]] as const;
      for (const headDim of [8, 16, 24, 40, 112]) {
        await check({ headDim, numHeads: 4, numKvHeads: 2, seqs: prefill });
        await check({ headDim, numHeads: 6, numKvHeads: 1, seqs: decode });
      }
      await check({ headDim: 16, numHeads: 4, numKvHeads: 4, seqs: prefill, alibi: true, dtype: 'f16' });
      await check({ headDim: 16, numHeads: 4, numKvHeads: 2, seqs: prefill, slidingWindow: 9, softcap: 20 });
    });

    test('head sizes over 256 are a typed error', () => {
      const qkv = h.rand([1, 3 * 320], 'bf16');
      assert.throws(
        () => gpu.attention(qkv.gpu, qkv.gpu, { k: qkv.gpu, v: qkv.gpu }, {
          numSeqs: 1, numTokens: 1, maxBlocksPerSeq: 1, maxSeqlenQ: 1, maxSeqlenK: 1, isDecode: true,
          cuSeqlensQ: qkv.gpu, contextLens: qkv.gpu, blockTables: qkv.gpu,
        }, { numHeads: 1, numKvHeads: 1, headDim: 320, blockSize: 16, scale: 1 }),
        (e: unknown) => isPeregrineError(e, 'PGN_ERR_UNSUPPORTED_FEATURE') && /up to 256/.test(e.message) && /not 320/.test(e.message),
      );
    });
  });
}
