// Teacher-forced logits of a golden fixture's cases, from the fixture itself or from a
// quantized checkpoint built from it (the model loader reads quantized checkpoints as they are).
import { CpuBackend } from '../../src/backends/cpu/cpu-backend.js';
import { loadModel } from '../../src/models/load-model.js';
import { ModelRunner } from '../../src/runner/model-runner.js';
import { buildForwardBatch } from '../../src/runner/input-builder.js';
import type { GoldenFixture } from './golden.js';

/**
 * Logits of every position of prompt ++ greedyIds[0 .. n-2] for each golden case, from the
 * checkpoint at `quantDir` (null: the fixture `g.dir` itself). Returns [rows, vocab] per case:
 * rows 0..promptLen-1 match `logits`, rows promptLen-1.. match `greedyLogits`.
 */
export async function teacherForcedLogits(g: GoldenFixture, quantDir: string | null): Promise<Float32Array[]> {
  const backend = new CpuBackend();
  const model = loadModel(quantDir ?? g.dir, backend);
  if (quantDir && model.quant === null) throw new Error(`${quantDir} was not read as a quantized checkpoint`);
  const maxLen = Math.max(...g.cases.map((c) => c.promptIds.length + c.greedyIds.length));
  const runner = new ModelRunner(backend, model.spec, model.weights, {
    numBlocks: 64, blockSize: 16, maxModelLen: maxLen + 16, maxNumBatchedTokens: maxLen, maxNumSeqs: 1, maxNumLogits: maxLen,
  });
  const out: Float32Array[] = [];
  for (const c of g.cases) {
    const tokenIds = [...c.promptIds, ...c.greedyIds.slice(0, -1)];
    const blockTable = Array.from({ length: Math.ceil(tokenIds.length / 16) }, (_, j) => j);
    const fb = buildForwardBatch([{ seq: { tokenIds, numCachedTokens: 0, blockTable }, numNewTokens: tokenIds.length }], 16, runner.maxBlocksPerSeq);
    out.push((await runner.forward({ ...fb, logitsIndices: Int32Array.from(tokenIds, (_, i) => i) })).slice());
  }
  runner.dispose();
  return out;
}

/** The golden reference rows in the same order: prompt logits, then the greedy steps after the first. */
export function goldenRows(g: GoldenFixture): Float32Array[] {
  return g.cases.map((c) => {
    const V = g.vocabSize;
    const rows = new Float32Array((c.promptIds.length + c.greedyIds.length - 1) * V);
    rows.set(c.logits);
    rows.set(c.greedyLogits.subarray(V), c.promptIds.length * V);
    return rows;
  });
}
