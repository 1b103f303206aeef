// The decoder hands FP8 linears their input already quantized when the backend fuses the producing op with FP8
// quantization (Backend.rmsNormFp8 for qkv / gate_up, Backend.siluMulFp8 for down; issue 6): checked on the CPU
// with a backend that offers the fused ops (its own reference of them) and checks, in every linear that receives
// `xq`, that xq is exactly x quantized for that weight. The logits must not change, and backends without the ops
// (or returning false) see the plain path. Where the decoder names the linear as out's only reader (`onlyReader`)
// a backend may leave out unwritten: the backend here then fills out with NaN (the linear computes from the true
// values kept aside), so any other reader of out would change the logits.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isQuantizedWeight, type Fp8Activations, type QuantizedWeight, type Tensor } from '../src/backends/backend.js';
import { CpuBackend, cpuData } from '../src/backends/cpu/cpu-backend.js';
import { SHAPES } from '../src/bench/shapes.js';
import { randomModelWeights } from '../src/bench/random-weights.js';
import { parseModelConfig } from '../src/models/config.js';
import type { ModelWeights } from '../src/models/model-weights.js';
import { buildForwardBatch } from '../src/runner/input-builder.js';
import { ModelRunner } from '../src/runner/model-runner.js';
import { encodeE4M3, FP8_E4M3_MAX, FP8_MIN_ACTIVATION_SCALE } from '../src/weights/quant/fp8.js';

const RUNNER = { numBlocks: 16, blockSize: 16, maxModelLen: 64, maxNumBatchedTokens: 64, maxNumSeqs: 4, maxNumLogits: 64 };
const PROMPT = [5, 17, 33, 2, 9, 101, 44];

/** The reference of rmsNormFp8: rmsNorm, then each row of out to E4M3 as an FP8 linear quantizes it. */
function quantizeRows(x: Float32Array, T: number, K: number, inputScale: number | null, codes: Uint8Array, scales: Float32Array): void {
  for (let t = 0; t < T; t++) {
    let amax = 0;
    for (let k = 0; k < K; k++) amax = Math.max(amax, Math.abs(x[t * K + k]!));
    const s = inputScale ?? Math.max(Math.fround(amax / FP8_E4M3_MAX), FP8_MIN_ACTIVATION_SCALE);
    scales[t] = s;
    for (let k = 0; k < K; k++) codes[t * K + k] = encodeE4M3(Math.fround(x[t * K + k]! / s));
  }
}

class FusingCpu extends CpuBackend {
  readonly calls = { norms: 0, silus: 0, fp8Inputs: 0, onlyReaders: 0, inputScales: [] as (Tensor | null)[] };
  /** outs left "unwritten" (NaN) under onlyReader -> their true values, which only the named linear may use */
  readonly #withheld = new Map<Tensor, Float32Array>();
  constructor(private readonly fuse: boolean, private readonly withhold = false) {
    super();
  }

  rmsNormFp8(out: Tensor, x: Tensor, weight: Tensor, eps: number, numTokens: number, residual: Tensor | null, weightOffset: number, xq: Fp8Activations, inputScale: Tensor | null, onlyReader?: QuantizedWeight): boolean {
    if (!this.fuse) return false;
    super.rmsNorm(out, x, weight, eps, numTokens, residual, weightOffset);
    this.calls.norms++;
    return this.quantizeOut(out, numTokens, xq, inputScale, onlyReader);
  }

  siluMulFp8(out: Tensor, gateUp: Tensor, numTokens: number, xq: Fp8Activations, inputScale: Tensor | null, onlyReader?: QuantizedWeight): boolean {
    if (!this.fuse) return false;
    super.siluMul(out, gateUp, numTokens);
    this.calls.silus++;
    return this.quantizeOut(out, numTokens, xq, inputScale, onlyReader);
  }

  override rmsNorm(out: Tensor, x: Tensor, weight: Tensor, eps: number, n: number, residual?: Tensor | null, weightOffset?: number): void {
    this.#withheld.delete(out);
    super.rmsNorm(out, x, weight, eps, n, residual, weightOffset);
  }

  override siluMul(out: Tensor, gateUp: Tensor, numTokens: number): void {
    this.#withheld.delete(out);
    super.siluMul(out, gateUp, numTokens);
  }

  /** The fused ops' second half: out's rows into xq as the FP8 linear would quantize them; out withheld (NaN) where allowed. */
  private quantizeOut(out: Tensor, numTokens: number, xq: Fp8Activations, inputScale: Tensor | null, onlyReader: QuantizedWeight | undefined): true {
    const codes = cpuData(xq.codes) as Int32Array;
    const values = cpuData(out) as Float32Array;
    quantizeRows(values, numTokens, out.shape.at(-1)!, inputScale ? cpuData(inputScale)[0]! : null, new Uint8Array(codes.buffer, codes.byteOffset, codes.byteLength), cpuData(xq.scales) as Float32Array);
    this.calls.inputScales.push(inputScale);
    if (onlyReader) this.calls.onlyReaders++;
    if (onlyReader && this.withhold) {
      this.#withheld.set(out, values.slice());
      values.fill(Number.NaN);
    } else {
      this.#withheld.delete(out);
    }
    return true;
  }

  override linear(out: Tensor, x: Tensor, w: Tensor | QuantizedWeight, bias: Tensor | null, numTokens: number, xq?: Fp8Activations | null): void {
    const withheld = this.#withheld.get(x);
    if (withheld) {
      assert.ok(xq, 'a withheld output is read only by the linear given its codes');
      const values = cpuData(x) as Float32Array;
      values.set(withheld);
      this.#withheld.delete(x);
    }
    if (xq) {
      assert.ok(isQuantizedWeight(w) && w.kind === 'fp8', 'xq only for FP8 weights');
      const K = w.shape[1];
      const codes = new Uint8Array(numTokens * K), scales = new Float32Array(numTokens);
      quantizeRows(cpuData(x) as Float32Array, numTokens, K, w.inputScale ? cpuData(w.inputScale)[0]! : null, codes, scales);
      const got = cpuData(xq.codes) as Int32Array;
      assert.deepEqual(new Uint8Array(got.buffer, got.byteOffset, numTokens * K), codes, 'xq holds x quantized for this weight');
      assert.deepEqual((cpuData(xq.scales) as Float32Array).subarray(0, numTokens), scales, 'xq scales');
      this.calls.fp8Inputs++;
    }
    super.linear(out, x, w, bias, numTokens);
  }
}

async function logits(backend: CpuBackend, staticScale: number | null): Promise<Float32Array> {
  const spec = parseModelConfig(SHAPES['tiny-llama']!);
  let weights: ModelWeights = randomModelWeights(spec, backend, { seed: 3, quantization: 'fp8' });
  if (staticScale !== null) {
    const scale = backend.fromF32([1], Float32Array.of(staticScale));
    const withScale = (w: ModelWeights['layers'][number]['qkv']) => (isQuantizedWeight(w) ? { ...w, inputScale: scale } : w);
    weights = { ...weights, layers: weights.layers.map((l) => ({ ...l, qkv: withScale(l.qkv), up: withScale(l.up), down: withScale(l.down) })) };
  }
  const runner = new ModelRunner(backend, spec, weights, RUNNER);
  const seq = { tokenIds: PROMPT, numCachedTokens: 0, blockTable: [0] };
  const prefill = (await runner.forward(buildForwardBatch([{ seq, numNewTokens: PROMPT.length }], 16, runner.maxBlocksPerSeq))).slice();
  const decode = await runner.forward(buildForwardBatch([{ seq: { tokenIds: [...PROMPT, 7], numCachedTokens: PROMPT.length, blockTable: [0] }, numNewTokens: 1 }], 16, runner.maxBlocksPerSeq));
  return Float32Array.of(...prefill, ...decode);
}

for (const staticScale of [null, 0.05]) {
  test(`FP8 qkv / gate_up get their input from the fused norm, down from the fused SiLU (${staticScale === null ? 'dynamic' : 'static'} scales); logits unchanged`, async () => {
    const fused = new FusingCpu(true);
    const got = await logits(fused, staticScale);
    const layers = parseModelConfig(SHAPES['tiny-llama']!).numLayers;
    assert.equal(fused.calls.norms, 2 * 2 * layers, 'two norms a layer, two forwards');
    assert.equal(fused.calls.silus, 2 * layers, 'one SiLU a layer, two forwards');
    assert.equal(fused.calls.fp8Inputs, 3 * 2 * layers, 'qkv_proj, gate_up_proj and down_proj read xq');
    assert.ok(fused.calls.inputScales.every((s) => (s === null) === (staticScale === null)), 'the linear\'s own input scale goes to the norm');
    const declined = new FusingCpu(false);
    const want = await logits(declined, staticScale);
    assert.equal(declined.calls.fp8Inputs, 0, 'no xq where the backend declines');
    assert.deepEqual(got, want);
    assert.deepEqual(await logits(new CpuBackend(), staticScale), want, 'a backend without rmsNormFp8');
    assert.equal(fused.calls.onlyReaders, 3 * 2 * layers, 'each fused producer names its linear as the only reader');
    const withholding = new FusingCpu(true, true);
    assert.deepEqual(await logits(withholding, staticScale), want, 'outs left unwritten (NaN) under onlyReader: nothing else reads them');
  });
}
