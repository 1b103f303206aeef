// Issue 8 point 5: perplexity of the demo model (real trained weights) quantized to FP8, INT8
// and INT4 by `peregrine build`, against BF16, on the first windows of the held-out text.
// Bounds, from measurements on this text (2026-11-27, 16 windows: BF16 31.04, INT8 31.04
// (+0.01%), FP8 31.05 (+0.01%), INT4 group-128 32.05 (+3.2%)), with headroom for the shorter
// slice scored here: a wrong scale or packing order costs far more than these.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { computePerplexity } from '../src/bench/perplexity.js';
import { loadModel } from '../src/models/load-model.js';
import { ModelRunner } from '../src/runner/model-runner.js';
import { Tokenizer } from '../src/tokenizer/tokenizer.js';
import { compareLogits, formatAccuracy } from '../src/weights/quant/accuracy.js';
import { buildQuantizedCheckpoint } from '../src/weights/quant/build.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const DEMO = join(ROOT, 'models', 'demo');
const WINDOW = 128;
const NUM_WINDOWS = 8;
const MAX_REL_PPL_INCREASE = { int8: 0.005, fp8: 0.01, int4: 0.06 } as const;
/**
 * Top-1 agreement with BF16 over the 1016 scored positions. Measured 2026-11-28: INT8 99.1%,
 * FP8 (per-tensor weights, dynamic per-token activations) 97.0% — issue 6's goal — (per-channel
 * weight scales: 96.2%), INT4 88.0%. The bounds leave a few rows of slack (one row is 0.1%).
 */
const MIN_TOP1 = { int8: 0.98, fp8: 0.965, int4: 0.85 } as const;
const VARIANTS = [['int8', 'int8', undefined], ['fp8', 'fp8', undefined], ['int4', 'int4', undefined]] as const;

async function ppl(dir: string, ids: number[], logits?: Float32Array[]): Promise<number> {
  const backend = new CpuBackend();
  const m = loadModel(dir, backend);
  const runner = new ModelRunner(backend, m.spec, m.weights, { numBlocks: WINDOW / 16, blockSize: 16, maxModelLen: WINDOW, maxNumBatchedTokens: WINDOW, maxNumSeqs: 1, maxNumLogits: WINDOW });
  const r = await computePerplexity(runner, ids, WINDOW, NUM_WINDOWS, logits);
  runner.dispose();
  return r.ppl;
}

const concat = (rows: Float32Array[]) => {
  const all = new Float32Array(rows.reduce((a, r) => a + r.length, 0));
  rows.reduce((off, r) => (all.set(r, off), off + r.length), 0);
  return all;
};

test('demo model perplexity and top-1 agreement under FP8, INT8 and INT4 stay close to BF16', async (t) => {
  const tok = await Tokenizer.load(DEMO);
  const ids = tok.encode(readFileSync(join(ROOT, 'tools', 'demo-model', 'heldout.txt'), 'utf8'));
  const baseLogits: Float32Array[] = [];
  const base = await ppl(DEMO, ids, baseLogits);
  const tmp = mkdtempSync(join(tmpdir(), 'pgn-demo-quant-'));
  try {
    for (const [label, kind, fp8Scale] of VARIANTS) {
      const out = join(tmp, label);
      await buildQuantizedCheckpoint({ modelDir: DEMO, outDir: out, kind, fp8Scale, jobs: 1 });
      const logits: Float32Array[] = [];
      const q = await ppl(out, ids, logits);
      const rel = q / base - 1;
      assert.ok(rel > -0.002 && rel < MAX_REL_PPL_INCREASE[kind], `${label}: ppl ${q.toFixed(3)} vs bf16 ${base.toFixed(3)} (${(100 * rel).toFixed(2)}%)`);
      // issue 6's accuracy goal, on real trained weights: the next-token argmax agrees with BF16's
      const acc = compareLogits(concat(baseLogits), concat(logits), baseLogits[0]!.length / (WINDOW - 1));
      t.diagnostic(`${label}: ppl ${q.toFixed(4)} (${(100 * rel).toFixed(3)}%), ${formatAccuracy('demo', acc)}`);
      assert.ok(acc.top1Agreement >= MIN_TOP1[kind], `${label}: top-1 agreement ${acc.top1Agreement} < ${MIN_TOP1[kind]}`);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
