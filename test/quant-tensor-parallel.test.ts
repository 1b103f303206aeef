// Tensor parallelism over quantized checkpoints: a rank's slice of a quantized linear (rows for
// column-parallel, whole groups of columns for row-parallel) dequantizes to the same slice of the
// whole weight, and tp 2 over FP8 / INT8 / INT4 checkpoints gives tp 1's logits (CPU ranks).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LLM } from '../src/api/llm.js';
import { buildForwardBatch } from '../src/runner/input-builder.js';
import type { TpGroup } from '../src/parallel/tp-group.js';
import { dequantize } from '../src/weights/quant/dequantize.js';
import { quantizeWeight } from '../src/weights/quant/quantize.js';
import { sliceQuantWeight } from '../src/weights/quant/slice.js';
import { buildQuantizedCheckpoint } from '../src/weights/quant/build.js';
import { writeTinyLlama } from './helpers/tiny-checkpoint.js';

function randomWeight(N: number, K: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: N * K }, () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648 - 0.5) * 0.2);
}

/** rows / columns of a row-major [N, K] matrix */
function slice(w: Float32Array, N: number, K: number, dim: 0 | 1, ranges: [number, number][]): Float32Array {
  const out: number[] = [];
  if (dim === 0) for (const [a, b] of ranges) out.push(...w.subarray(a * K, b * K));
  else for (let n = 0; n < N; n++) for (const [a, b] of ranges) out.push(...w.subarray(n * K + a, n * K + b));
  return Float32Array.from(out);
}

test('a slice of a quantized weight dequantizes to the slice of the whole', () => {
  const N = 48, K = 512;
  const w = randomWeight(N, K, 7);
  const formats = [
    { kind: 'fp8' as const }, { kind: 'fp8' as const, fp8Scale: 'channel' as const },
    { kind: 'int8' as const }, { kind: 'int8' as const, groupSize: 128 },
    { kind: 'int4' as const, groupSize: 128, symmetric: true }, { kind: 'int4' as const, groupSize: 128, symmetric: false },
  ];
  for (const f of formats) {
    const q = quantizeWeight(w, N, K, f as never);
    const full = dequantize(q);
    const cases: Array<[0 | 1, [number, number][]]> = [[0, [[0, 16], [24, 32], [40, 48]]], [0, [[8, 24]]], [1, [[256, 512]]], [1, [[0, 128], [384, 512]]]];
    for (const [dim, ranges] of cases) {
      const part = sliceQuantWeight(q, { dim, ranges }, 'w');
      assert.deepEqual(dequantize(part), slice(full, N, K, dim, ranges), `${JSON.stringify(f)} dim ${dim} ${JSON.stringify(ranges)}`);
    }
  }
  const grouped = quantizeWeight(w, N, K, { kind: 'int4', groupSize: 128, symmetric: true } as never);
  assert.throws(() => sliceQuantWeight(grouped, { dim: 1, ranges: [[0, 192]] }, 'layers.0.mlp.down_proj.weight'), (e: any) =>
    e.code === 'PGN_ERR_UNSUPPORTED_FEATURE' && /layers\.0\.mlp\.down_proj\.weight: columns \[0, 192\) do not fall on groups of 128/.test(e.message));
});

test('tp 2 over FP8, INT8 and INT4 checkpoints gives the logits of tp 1', async (t) => {
  const src = writeTinyLlama({ hidden: 256, ffn: 512, heads: 4, kvHeads: 2, vocab: 256 });
  const tmp = mkdtempSync(join(tmpdir(), 'pgn-qtp-'));
  try {
    const ids = [3, 17, 99, 4, 250, 31, 8];
    const fb = buildForwardBatch([{ seq: { tokenIds: ids, numCachedTokens: 0, blockTable: [0] }, numNewTokens: ids.length }], 16, 4);
    const all = { ...fb, logitsIndices: Int32Array.from(ids, (_, i) => i) };
    const opts = { maxModelLen: 64, maxNumSeqs: 2, maxNumBatchedTokens: 64, maxNumLogits: 64 } as const;
    for (const [kind, tol] of [['int8', 1e-4], ['int4', 1e-4], ['fp8', 0.08]] as const) {
      const dir = join(tmp, kind);
      await buildQuantizedCheckpoint({ modelDir: src, outDir: dir, kind, jobs: 1 });
      const one = await LLM.load(dir, opts);
      const two = await LLM.load(dir, { ...opts, tp: 2 });
      try {
        const want = await one.runner.forward(all);
        const got = await (two.executor as TpGroup).forward(all);
        let err = 0, scale = 0;
        for (let i = 0; i < want.length; i++) { err = Math.max(err, Math.abs(want[i]! - got[i]!)); scale = Math.max(scale, Math.abs(want[i]!)); }
        // weight-only: the same math in another summation order; fp8: each rank's per-token activation
        // scales cover its own slice of o / down's input, so the difference is of the order of FP8's
        // own error (E4M3 keeps 3 mantissa bits: ~6% per element, a few % on the logits)
        t.diagnostic(`${kind}: max |tp2 - tp1| / max |logit| = ${(err / scale).toExponential(2)}`);
        assert.ok(err / scale < tol, `${kind}: max |tp2 - tp1| ${err} of scale ${scale}`);
      } finally {
        await one.close();
        await two.close();
      }
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
    rmSync(src, { recursive: true, force: true });
  }
});
