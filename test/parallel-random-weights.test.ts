// Random weights under tensor parallelism (benchmarks without a checkpoint): each rank makes only
// its slice of the model tp = 1 makes from the same seed, so a random TP group and a random
// one-device model give the same logits; FP8 random linears too. On the CPU (worker threads).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { isQuantizedWeight } from '../src/backends/backend.js';
import { SHAPES } from '../src/bench/shapes.js';
import { randomModelWeights } from '../src/bench/random-weights.js';
import { parseModelConfig } from '../src/models/config.js';
import { shardSpec } from '../src/parallel/sharding.js';
import { TpGroup } from '../src/parallel/tp-group.js';
import { buildForwardBatch } from '../src/runner/input-builder.js';
import { ModelRunner } from '../src/runner/model-runner.js';

const TINY = SHAPES['tiny-llama']!;
const RUNNER = { numBlocks: 16, blockSize: 16, maxModelLen: 64, maxNumBatchedTokens: 64, maxNumSeqs: 4, maxNumLogits: 64 };
const LOGIT_TOL = 1e-3;
/** FP8 activations are quantized per token over each rank's slice of a row-parallel input, not the whole row */
const FP8_LOGIT_TOL = 0.1;

test('a rank makes only its shard: heads, KV heads, MLP width and vocab rows of its slice', () => {
  const spec = parseModelConfig(TINY); // 8 heads, 4 KV heads, head 32, ffn 512, vocab 1024
  const b = new CpuBackend();
  const w = randomModelWeights(spec, b, { tp: 2, rank: 1 });
  const r = shardSpec(spec, 2, 1);
  const l = w.layers[0]!;
  assert.deepEqual(l.qkv.shape, [(r.numHeads + 2 * r.numKvHeads) * r.headDim, spec.hiddenSize]);
  assert.deepEqual(l.o.shape, [spec.hiddenSize, r.numHeads * r.headDim]);
  assert.deepEqual(l.up.shape, [2 * spec.intermediateSize / 2, spec.hiddenSize]);
  assert.deepEqual(l.down.shape, [spec.hiddenSize, spec.intermediateSize / 2]);
  assert.deepEqual(w.embedTokens.shape, [spec.vocabSize / 2, spec.hiddenSize]);
  assert.deepEqual(w.lmHead.shape, [spec.vocabSize / 2, spec.hiddenSize]);
  const fp8 = randomModelWeights(spec, b, { tp: 2, rank: 0, quantization: 'fp8' }).layers[0]!;
  assert.ok(isQuantizedWeight(fp8.down) && fp8.down.kind === 'fp8');
  assert.deepEqual(fp8.down.shape, [spec.hiddenSize, spec.intermediateSize / 2]);
  assert.deepEqual(fp8.down.qweight.shape, [spec.hiddenSize, spec.intermediateSize / 8]);
});

for (const quantization of [null, 'fp8'] as const) {
  test(`random ${quantization ?? 'bf16'} weights at tp 2 give the logits of the same random model at tp 1`, async () => {
    const spec = parseModelConfig(TINY);
    const backend = new CpuBackend();
    const ref = new ModelRunner(backend, spec, randomModelWeights(spec, backend, { seed: 3, quantization }), RUNNER);
    const group = await TpGroup.start({ randomModel: { config: TINY, seed: 3, quantization }, tp: 2, runner: RUNNER });
    try {
      const ids = [5, 900, 17, 511, 512, 3, 1023, 77, 200];
      const fb = buildForwardBatch([{ seq: { tokenIds: ids, numCachedTokens: 0, blockTable: [0] }, numNewTokens: ids.length }], 16, ref.maxBlocksPerSeq);
      const all = { ...fb, logitsIndices: Int32Array.from(ids, (_, i) => i) };
      const want = await ref.forward(all);
      const got = await group.forward(all);
      assert.equal(got.length, ids.length * spec.vocabSize);
      let err = 0, scale = 0;
      for (let i = 0; i < want.length; i++) { err = Math.max(err, Math.abs(want[i]! - got[i]!)); scale = Math.max(scale, Math.abs(want[i]!)); }
      assert.ok(scale > 0.1, `logits of scale ${scale}`);
      assert.ok(err < (quantization ? FP8_LOGIT_TOL : LOGIT_TOL) * scale, `max |logit - TP1 logit| ${err} of scale ${scale}`);
    } finally {
      await group.dispose();
      ref.dispose();
    }
  });
}

test('a group needs exactly one of modelDir and randomModel', async () => {
  await assert.rejects(TpGroup.start({ tp: 2, runner: RUNNER }), (e: any) => e.code === 'PGN_ERR_INVALID_ARGUMENT' && /modelDir and randomModel/.test(e.message));
  await assert.rejects(TpGroup.start({ modelDir: '/nonexistent', randomModel: { config: TINY }, tp: 2, runner: RUNNER }), (e: any) => e.code === 'PGN_ERR_INVALID_ARGUMENT');
});

test('a random model whose heads tp does not split is refused before any rank starts', async () => {
  await assert.rejects(TpGroup.start({ randomModel: { config: TINY }, tp: 3, runner: RUNNER }), (e: any) => e.code === 'PGN_ERR_INVALID_ARGUMENT' && /does not divide the 8 attention heads/.test(e.message));
});
