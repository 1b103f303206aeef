// The logits of every position of `ids` from a runner, computed as a chunked prefill: the first half,
// then the rest reading the first half from the KV cache (blocks 0.. of 16 tokens).
import { buildForwardBatch } from '../../src/runner/input-builder.js';
import type { ModelRunner } from '../../src/runner/model-runner.js';

export async function chunkedPrefillLogits(r: ModelRunner, ids: readonly number[]): Promise<Float32Array> {
  const half = Math.floor(ids.length / 2), rest = ids.length - half;
  const seq = { tokenIds: ids, numCachedTokens: 0, blockTable: Array.from({ length: Math.ceil(ids.length / 16) }, (_, j) => j) };
  await r.forward(buildForwardBatch([{ seq, numNewTokens: half }], 16, r.maxBlocksPerSeq));
  return r.forward({ ...buildForwardBatch([{ seq: { ...seq, numCachedTokens: half }, numNewTokens: rest }], 16, r.maxBlocksPerSeq), logitsIndices: Int32Array.from({ length: rest }, (_, i) => i) });
}
