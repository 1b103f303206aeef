/**
 * The decoder's use of a backend's fused siluMul + down_proj (Backend.siluMulLinear, CUDA's ring GEMV
 * prologue): where the backend takes the op, the decoder runs neither siluMul nor the down linear; where
 * it declines (returns false), both run as before; either way the logits are those of the plain backend.
 * On the CPU reference through a backend that fuses by calling its own two ops.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { QuantizedWeight, Tensor } from '../src/backends/backend.js';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { loadModel } from '../src/models/load-model.js';
import { ModelRunner } from '../src/runner/model-runner.js';
import { simpleGenerate } from '../src/runner/simple-generate.js';
import { loadGolden } from './helpers/golden.js';

/** A CPU backend that takes (or declines) siluMulLinear and counts what the decoder asks of it. */
class FusingCpu extends CpuBackend {
  readonly counts = { fused: 0, declined: 0, siluMul: 0, linear: 0 };
  constructor(readonly accept: boolean) {
    super();
  }
  siluMulLinear(out: Tensor, gateUp: Tensor, w: Tensor | QuantizedWeight, bias: Tensor | null, numTokens: number): boolean {
    if (!this.accept) {
      this.counts.declined++;
      return false;
    }
    this.counts.fused++;
    const act = super.empty([numTokens, w.shape[1]!], gateUp.dtype);
    super.siluMul(act, gateUp, numTokens);
    super.linear(out, act, w, bias, numTokens);
    super.free(act);
    return true;
  }
  override siluMul(out: Tensor, gateUp: Tensor, numTokens: number): void {
    this.counts.siluMul++;
    super.siluMul(out, gateUp, numTokens);
  }
  override linear(out: Tensor, x: Tensor, w: Tensor | QuantizedWeight, bias: Tensor | null, numTokens: number): void {
    this.counts.linear++;
    super.linear(out, x, w, bias, numTokens);
  }
}

async function decode(be: CpuBackend, name: string): Promise<{ tokens: number[][]; logits: Float32Array[] }> {
  const g = loadGolden(name);
  const model = loadModel(g.dir, be);
  const runner = new ModelRunner(be, model.spec, model.weights, { numBlocks: 64, blockSize: 16, maxModelLen: 256, maxNumBatchedTokens: 256, maxNumSeqs: 8 });
  try {
    const res = await simpleGenerate(runner, g.cases.map((c) => c.promptIds), { temperature: 0, maxTokens: 4, ignoreEos: true, keepLogits: true });
    return { tokens: res.tokenIds, logits: res.stepLogits!.flat() };
  } finally {
    runner.dispose();
  }
}

test('a backend that fuses siluMul + down_proj: the decoder skips both ops and the logits are unchanged; one that declines: both run', async () => {
  const plain = await decode(new CpuBackend(), 'llama-gqa-llama3');
  const fusing = new FusingCpu(true);
  const fused = await decode(fusing, 'llama-gqa-llama3');
  assert.deepEqual(fused.tokens, plain.tokens);
  assert.deepEqual(fused.logits, plain.logits, 'the same logits, bit for bit');
  assert.ok(fusing.counts.fused > 0, 'the decoder asked for the fused op');
  assert.equal(fusing.counts.siluMul, 0, 'no separate siluMul once the backend took the fused op');
  const declining = new FusingCpu(false);
  const declined = await decode(declining, 'llama-gqa-llama3');
  assert.deepEqual(declined.logits, plain.logits);
  assert.equal(declining.counts.siluMul, declining.counts.declined, 'one siluMul for every declined fused op');
  assert.ok(declining.counts.linear > fusing.counts.linear, 'the down linears run separately when declined');
  assert.equal(declining.counts.linear - fusing.counts.linear, declining.counts.declined, 'exactly one extra linear (down_proj) per declined op');
});
