// Pre-quantized MoE checkpoints (FP8 / INT8 / INT4 experts, as FP8 exports of Mixtral store them):
// the experts load dequantized to the activation dtype, so the model gives exactly the logits of
// a plain checkpoint holding dequant(quant(w)) for every expert.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { loadModel } from '../src/models/load-model.js';
import { buildForwardBatch } from '../src/runner/input-builder.js';
import { ModelRunner } from '../src/runner/model-runner.js';
import { Checkpoint } from '../src/weights/checkpoint.js';
import { toFloat32 } from '../src/weights/dtype.js';
import { quantizationConfigFor, quantizeForCheckpoint } from '../src/weights/quant/checkpoint-writer.js';
import { dequantize } from '../src/weights/quant/dequantize.js';
import { quantizeWeight } from '../src/weights/quant/quantize.js';
import { writeSafetensors, type TensorToWrite } from '../src/weights/safetensors-writer.js';
import { fixtureDir } from './helpers/golden.js';

const SRC = fixtureDir('mixtral');
const EXPERT = /experts\.\d+\.w[123]\.weight$/;

/** `kind`: experts stored quantized (the checkpoint format); null: experts as f32 dequant(quant(w)) */
function writeVariant(out: string, kind: 'fp8' | 'int8' | 'int4', quantized: boolean): void {
  const ck = Checkpoint.open(SRC);
  const tensors: Record<string, TensorToWrite> = {};
  try {
    for (const name of ck.names()) {
      const t = ck.read(name);
      if (!EXPERT.test(name)) {
        tensors[name] = { dtype: t.dtype, shape: [...t.shape], data: t.bytes };
        continue;
      }
      const [N, K] = t.shape as [number, number];
      const w = toFloat32(t.dtype, t.bytes);
      if (quantized) {
        Object.assign(tensors, quantizeForCheckpoint(w, N, K, { kind }, name.replace(/\.weight$/, '')));
      } else {
        // what the checkpoint writer stores, dequantized (int4: f16 scales, GPTQ's zero >= 1)
        const opts = kind === 'int4' ? { kind, groupSize: 128, symmetric: true, f16Scales: true, minZero: 1 } : { kind };
        const f = dequantize(quantizeWeight(w, N, K, opts as never, name));
        tensors[name] = { dtype: 'F32', shape: [N, K], data: new Uint8Array(f.buffer) };
      }
    }
  } finally {
    ck.close();
  }
  mkdirSync(out, { recursive: true });
  writeSafetensors(join(out, 'model.safetensors'), tensors);
  const cfg = JSON.parse(readFileSync(join(SRC, 'config.json'), 'utf8'));
  if (quantized) cfg.quantization_config = quantizationConfigFor({ kind }, ['lm_head']);
  writeFileSync(join(out, 'config.json'), JSON.stringify(cfg));
}

async function logits(dir: string, ids: number[]): Promise<Float32Array> {
  const backend = new CpuBackend();
  const m = loadModel(dir, backend);
  const runner = new ModelRunner(backend, m.spec, m.weights, { numBlocks: 4, blockSize: 16, maxModelLen: 64, maxNumBatchedTokens: 64, maxNumSeqs: 1, maxNumLogits: 64 });
  const fb = buildForwardBatch([{ seq: { tokenIds: ids, numCachedTokens: 0, blockTable: [0] }, numNewTokens: ids.length }], 16, runner.maxBlocksPerSeq);
  const out = await runner.forward({ ...fb, logitsIndices: Int32Array.from(ids, (_, i) => i) });
  runner.dispose();
  return out;
}

test('FP8 / INT8 / INT4 experts load dequantized: the logits of the plain checkpoint with the same expert values', async () => {
  const tmp = mkdtempSync(join(tmpdir(), 'pgn-moe-q-'));
  try {
    const ids = [1, 5, 9, 44, 17, 3];
    for (const kind of ['fp8', 'int8', 'int4'] as const) {
      writeVariant(join(tmp, `${kind}-q`), kind, true);
      writeVariant(join(tmp, `${kind}-plain`), kind, false);
      const got = await logits(join(tmp, `${kind}-q`), ids);
      const want = await logits(join(tmp, `${kind}-plain`), ids);
      let err = 0;
      for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[i]! - want[i]!));
      assert.ok(err < 1e-5, `${kind}: max |quantized-experts - plain| ${err}`);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
