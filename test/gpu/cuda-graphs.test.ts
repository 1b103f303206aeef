// Decode steps replayed as CUDA graphs (padded to a bucket) give the same logits and greedy
// tokens as eager steps, for batch sizes that fill a bucket and ones that do not.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CudaBackend } from '../../src/backends/cuda/cuda-backend.js';
import { loadModel } from '../../src/models/load-model.js';
import { ModelRunner } from '../../src/runner/model-runner.js';
import { simpleGenerate } from '../../src/runner/simple-generate.js';

const skip = CudaBackend.isAvailable() ? false : `no CUDA device: ${CudaBackend.unavailableReason()}`;
const DEMO = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'models', 'demo');

test('decode through CUDA graphs equals eager decode', { skip }, async () => {
  const backend = CudaBackend.create();
  try {
    const m = loadModel(DEMO, backend);
    const cfg = { numBlocks: 128, blockSize: 16, maxModelLen: 1024, maxNumBatchedTokens: 512, maxNumSeqs: 8 };
    const eager = new ModelRunner(backend, m.spec, m.weights, { ...cfg, enableCudaGraphs: false });
    const graphed = new ModelRunner(backend, m.spec, m.weights, { ...cfg, enableCudaGraphs: true });
    for (const n of [1, 3, 4, 7]) {
      const prompts = Array.from({ length: n }, (_, i) => Array.from({ length: 5 + 3 * i }, (_, j) => 10 + ((i * 97 + j * 31) % 4000)));
      const a = await simpleGenerate(eager, prompts, { temperature: 0, maxTokens: 24, ignoreEos: true, keepLogits: true });
      const b = await simpleGenerate(graphed, prompts, { temperature: 0, maxTokens: 24, ignoreEos: true, keepLogits: true });
      assert.deepEqual(b.tokenIds, a.tokenIds, `batch ${n}`);
      let err = 0, scale = 0;
      a.stepLogits!.forEach((rows, s) => rows.forEach((row, k) => {
        const other = b.stepLogits![s]![k]!;
        for (let i = 0; i < row.length; i++) { err = Math.max(err, Math.abs(row[i]! - other[i]!)); scale = Math.max(scale, Math.abs(row[i]!)); }
      }));
      assert.ok(err / scale < 1e-2, `batch ${n}: max |logit difference| ${err} of scale ${scale}`);
    }
    assert.ok(graphed.numCapturedGraphs >= 3, `captured ${graphed.numCapturedGraphs} graphs`);
    assert.equal(eager.numCapturedGraphs, 0);
  } finally {
    backend.dispose();
  }
});

test('writeI32Rows lays narrow rows out at the device stride and keeps the rest of each row', { skip }, async () => {
  const backend = CudaBackend.create();
  try {
    const t = backend.fromI32([3, 4], Int32Array.from({ length: 12 }, (_, i) => 100 + i));
    backend.writeI32Rows(t, Int32Array.of(1, 2, 3, 4, 5, 6), 3, 2, 4);
    assert.deepEqual([...(await backend.downloadI32(t))], [1, 2, 102, 103, 3, 4, 106, 107, 5, 6, 110, 111]);
    assert.throws(() => backend.writeI32Rows(t, Int32Array.of(1, 2, 3, 4, 5), 1, 5, 4), /do not fit/);
  } finally {
    backend.dispose();
  }
});
