/**
 * CUDA paged attention against the CPU reference: prefill, chunked prefill (earlier
 * context in the cache) and decode (split along the keys), every supported head size,
 * MHA/GQA/MQA, sliding window, ALiBi, soft-capping, block tables drawn from a shuffled
 * pool. Without a CUDA device the suite skips.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { AttentionMetadata, AttentionParams } from '../../src/backends/backend.js';
import { isPeregrineError } from '../../src/errors.js';
import { Harness, openCuda, SEED, shuffled, type Pair } from './cuda-harness.js';

const { gpu, reason } = openCuda();

interface Case {
  readonly headDim: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  /** per sequence: [queries this step, tokens in the cache after it] */
  readonly seqs: readonly (readonly [number, number])[];
  readonly blockSize?: number;
  readonly slidingWindow?: number;
  readonly alibi?: boolean;
  readonly softcap?: number;
  readonly dtype?: 'bf16' | 'f16';
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
    const numSeqs = seqs.length;
    const numTokens = seqs.reduce((a, [q]) => a + q, 0);
    const maxBlocksPerSeq = Math.max(...seqs.map(([, k]) => Math.ceil(k / blockSize))) + 1;
    const numBlocks = seqs.reduce((a, [, k]) => a + Math.ceil(k / blockSize), 0) + 3;
    const pool = shuffled(numBlocks, h.r);
    const tables = new Int32Array(numSeqs * maxBlocksPerSeq).fill(-1);
    let next = 0;
    seqs.forEach(([, k], s) => {
      for (let b = 0; b < Math.ceil(k / blockSize); b++) tables[s * maxBlocksPerSeq + b] = pool[next++]!;
    });
    const cuQ = new Int32Array(numSeqs + 1);
    seqs.forEach(([q], s) => { cuQ[s + 1] = cuQ[s]! + q; });
    const kvWidth = numKvHeads * headDim;
    const kCache = h.rand([numBlocks * blockSize, kvWidth], dtype);
    const vCache = h.rand([numBlocks * blockSize, kvWidth], dtype);
    const qkv = h.rand([numTokens, (numHeads + 2 * numKvHeads) * headDim], dtype);
    const out = h.output([numTokens, numHeads * headDim], dtype);
    const slopes = c.alibi ? h.fromF32([numHeads], Float32Array.from({ length: numHeads }, (_, i) => 2 ** (-8 * (i + 1) / numHeads)), 'f32') : null;
    const meta = (t: (p: Pair) => Pair['cpu']): AttentionMetadata => ({
      numSeqs, numTokens, maxBlocksPerSeq,
      cuSeqlensQ: t(h.ints([numSeqs + 1], cuQ)),
      contextLens: t(h.ints([numSeqs], Int32Array.from(seqs.map(([, k]) => k)))),
      blockTables: t(h.ints([numSeqs, maxBlocksPerSeq], tables)),
      maxSeqlenQ: Math.max(...seqs.map(([q]) => q)),
      maxSeqlenK: Math.max(...seqs.map(([, k]) => k)),
      isDecode: seqs.every(([q]) => q === 1),
    });
    const params = (t: (p: Pair) => Pair['cpu']): AttentionParams => ({
      numHeads, numKvHeads, headDim, blockSize, scale: 1 / Math.sqrt(headDim),
      slidingWindow: c.slidingWindow ?? null, logitSoftcap: c.softcap ?? null, alibiSlopes: slopes ? t(slopes) : null,
    });
    h.cpu.attention(out.cpu, qkv.cpu, { k: kCache.cpu, v: vCache.cpu }, meta((p) => p.cpu), params((p) => p.cpu));
    gpu!.attention(out.gpu, qkv.gpu, { k: kCache.gpu, v: vCache.gpu }, meta((p) => p.gpu), params((p) => p.gpu));
    const what = `attention ${dtype} D=${headDim} heads ${numHeads}/${numKvHeads} seqs ${JSON.stringify(seqs)}` +
      `${c.slidingWindow ? ` window ${c.slidingWindow}` : ''}${c.alibi ? ' alibi' : ''}${c.softcap ? ` softcap ${c.softcap}` : ''}`;
    await h.expectClose(out, what, undefined, dtype === 'bf16' ? 2e-2 : 5e-3);
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
