/**
 * The decoder's Llama-style layers on a backend's fused linears (src/models/fused-layer.ts,
 * Backend.fusedLinear; CUDA's ring GEMV): where the backend takes every fused op, no norm, siluMul or
 * separate down / o_proj output runs and the logits are those of the plain backend; where it declines
 * them all, the ops are exactly the plain pre-norm layer's; which models qualify. On the CPU reference
 * through a backend that "fuses" by calling its own separate ops.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { LinearFusion, QuantizedWeight, Tensor } from '../src/backends/backend.js';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { loadModel } from '../src/models/load-model.js';
import { fusableLayers } from '../src/models/fused-layer.js';
import { ModelRunner } from '../src/runner/model-runner.js';
import { simpleGenerate } from '../src/runner/simple-generate.js';
import { loadGolden } from './helpers/golden.js';

/** A CPU backend that takes (or declines) fusedLinear and logs the ops the decoder asks of it. */
class FusingCpu extends CpuBackend {
  readonly log: string[] = [];
  constructor(readonly accept: boolean) {
    super();
  }
  fusedLinear(out: Tensor, x: Tensor, w: Tensor | QuantizedWeight, bias: Tensor | null, numTokens: number, f: LinearFusion): boolean {
    const name = `fused(${f.input?.kind ?? 'x'}${f.accumulate ? ', +=' : ''})`;
    if (!this.accept) {
      this.log.push(`${name} declined`);
      return false;
    }
    this.log.push(name);
    const K = w.shape[1]!, N = w.shape[0]!;
    let input = x;
    if (f.input) {
      input = super.empty([numTokens, K], x.dtype);
      if (f.input.kind === 'siluMul') super.siluMul(input, x, numTokens);
      else super.rmsNorm(input, x, f.input.weight, f.input.eps, numTokens, null, f.input.weightOffset);
    }
    const y = f.accumulate ? super.empty([numTokens, N], out.dtype) : out;
    super.linear(y, input, w, bias, numTokens);
    if (f.accumulate) {
      super.add(out, out, y, numTokens);
      super.free(y);
    }
    if (input !== x) super.free(input);
    return true;
  }
  override rmsNorm(out: Tensor, x: Tensor, weight: Tensor, eps: number, n: number, residual?: Tensor | null, weightOffset?: number): void {
    this.log.push('rmsNorm');
    super.rmsNorm(out, x, weight, eps, n, residual, weightOffset);
  }
  override siluMul(out: Tensor, gateUp: Tensor, numTokens: number): void {
    this.log.push('siluMul');
    super.siluMul(out, gateUp, numTokens);
  }
  override linear(out: Tensor, x: Tensor, w: Tensor | QuantizedWeight, bias: Tensor | null, numTokens: number): void {
    this.log.push('linear');
    super.linear(out, x, w, bias, numTokens);
  }
}

/** A CPU backend that only logs, for the op sequence of the plain decoder. */
class LoggingCpu extends FusingCpu {
  constructor() {
    super(false);
  }
  declare fusedLinear: never;
}
Object.defineProperty(LoggingCpu.prototype, 'fusedLinear', { value: undefined });

const FIXTURE = 'llama-gqa-llama3';

async function decode(be: CpuBackend): Promise<{ tokens: number[][]; logits: Float32Array[] }> {
  const g = loadGolden(FIXTURE);
  const model = loadModel(g.dir, be);
  const runner = new ModelRunner(be, model.spec, model.weights, { numBlocks: 64, blockSize: 16, maxModelLen: 256, maxNumBatchedTokens: 256, maxNumSeqs: 8 });
  try {
    const res = await simpleGenerate(runner, g.cases.map((c) => c.promptIds), { temperature: 0, maxTokens: 4, ignoreEos: true, keepLogits: true });
    return { tokens: res.tokenIds, logits: res.stepLogits!.flat() };
  } finally {
    runner.dispose();
  }
}

test('fused layers: taken, no separate norm / siluMul runs inside the layers and the logits hold; declined, the plain layer\'s ops exactly', async () => {
  const plainBe = new LoggingCpu();
  const plain = await decode(plainBe);
  const fusing = new FusingCpu(true);
  const fused = await decode(fusing);
  assert.deepEqual(fused.tokens, plain.tokens);
  for (let i = 0; i < plain.logits.length; i++) {
    const a = plain.logits[i]!, b = fused.logits[i]!;
    let worst = 0;
    for (let j = 0; j < a.length; j++) worst = Math.max(worst, Math.abs(a[j]! - b[j]!));
    assert.ok(worst < 1e-4, `step ${i}: logits within 1e-4 (f32 sums in another order), worst ${worst}`);
  }
  const numLayers = loadModel(loadGolden(FIXTURE).dir, new CpuBackend()).spec.numLayers;
  const kinds = (log: string[], k: string) => log.filter((l) => l === k).length;
  const forwards = kinds(fusing.log, 'fused(rmsNorm)') / (2 * numLayers);
  assert.ok(Number.isInteger(forwards) && forwards > 0, `two fused norms a layer: ${kinds(fusing.log, 'fused(rmsNorm)')}`);
  assert.equal(kinds(fusing.log, 'fused(x, +=)'), forwards * numLayers, 'o_proj adds into the residual');
  assert.equal(kinds(fusing.log, 'fused(siluMul, +=)'), forwards * numLayers, 'down_proj takes siluMul and adds into the residual');
  assert.equal(kinds(fusing.log, 'siluMul'), 0, 'no separate siluMul');
  assert.equal(kinds(fusing.log, 'rmsNorm'), forwards, 'one rmsNorm a forward: the final norm only');

  const declining = new FusingCpu(false);
  const declined = await decode(declining);
  assert.deepEqual(declined.logits, plain.logits, 'declined: the same logits, bit for bit');
  assert.deepEqual(declining.log.filter((l) => !l.endsWith('declined')), plainBe.log, 'declined: the plain decoder\'s op sequence');
});

test('fusableLayers: one rank, RMSNorm, sequential SiLU-gated dense layers, a backend with fusedLinear', () => {
  const g = loadGolden(FIXTURE);
  const { spec, weights } = loadModel(g.dir, new CpuBackend());
  const fusing = new FusingCpu(true);
  assert.equal(fusableLayers(spec, weights.layers, fusing, false), true);
  assert.equal(fusableLayers(spec, weights.layers, new CpuBackend(), false), false, 'no fusedLinear');
  assert.equal(fusableLayers(spec, weights.layers, fusing, true), false, 'tensor parallel: the all-reduce sits between o_proj and the residual add');
  assert.equal(fusableLayers({ ...spec, parallelResidual: true }, weights.layers, fusing, false), false, 'parallel residual');
  assert.equal(fusableLayers({ ...spec, activation: 'gelu' }, weights.layers, fusing, false), false, 'GELU MLP');
  assert.equal(fusableLayers({ ...spec, norm: { ...spec.norm, type: 'layer' } }, weights.layers, fusing, false), false, 'LayerNorm');
  const fp8 = weights.layers.map((l) => ({ ...l, down: { kind: 'fp8', shape: [1, 1], qweight: l.o as Tensor, scales: l.o as Tensor, zeros: null, groupSize: 1, inputScale: null } as QuantizedWeight }));
  assert.equal(fusableLayers(spec, fp8, fusing, false), false, 'quantized linears keep their own fused paths');
});
