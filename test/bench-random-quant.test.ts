// Random INT8 / INT4 weights for benchmarks (bench latency / throughput --quantization int8|int4): weight-only
// QuantizedWeights of the right layouts with the dense weights' standard deviation, and tensor-parallel ranks
// holding exactly their slice of the one-device model's codes (a K shard of int4 maps to whole bytes).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isQuantizedWeight, type QuantizedWeight, type Tensor } from '../src/backends/backend.js';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { dequantizeRows } from '../src/weights/quant/dequantize.js';
import { randomModelWeights } from '../src/bench/random-weights.js';
import { SHAPES } from '../src/bench/shapes.js';
import { parseModelConfig } from '../src/models/config.js';

const spec = parseModelConfig(SHAPES['tiny-llama']!); // hidden 256, ffn 512

function quant(w: Tensor | QuantizedWeight): QuantizedWeight {
  assert.ok(isQuantizedWeight(w));
  return w;
}

for (const kind of ['int8', 'int4'] as const) {
  test(`${kind}: layouts, group sizes, and the dense weights' standard deviation`, async () => {
    const b = new CpuBackend();
    const l = randomModelWeights(spec, b, { seed: 2, quantization: kind }).layers[0]!;
    const down = quant(l.down);
    const [N, K] = [spec.hiddenSize, spec.intermediateSize];
    assert.equal(down.kind, kind);
    assert.deepEqual(down.shape, [N, K]);
    assert.deepEqual(down.qweight.shape, [N, K / (kind === 'int4' ? 8 : 4)]);
    assert.equal(down.groupSize, kind === 'int4' ? 128 : K);
    assert.deepEqual(down.scales.shape, [N, kind === 'int4' ? K / 128 : 1]);
    assert.equal(down.zeros, null);
    const w = new Float32Array(N * K);
    dequantizeRows({ kind, shape: down.shape, groupSize: down.groupSize, qweight: await b.downloadI32(down.qweight), scales: await b.downloadF32(down.scales), zeros: null }, 0, N, w);
    let sq = 0;
    for (const v of w) sq += v * v;
    const std = Math.sqrt(sq / w.length);
    assert.ok(Math.abs(std * Math.sqrt(K) - 1) < 0.05, `std ${std} vs 1/sqrt(${K})`);
  });

  test(`${kind}: a tensor-parallel rank's codes are its slice of the whole model's`, async () => {
    const b = new CpuBackend();
    const whole = randomModelWeights(spec, b, { seed: 4, quantization: kind }).layers[0]!;
    const perWord = kind === 'int4' ? 8 : 4;
    for (const rank of [0, 1]) {
      const part = randomModelWeights(spec, b, { seed: 4, quantization: kind, tp: 2, rank }).layers[0]!;
      // down is cut along K (columns of codes), up along N (rows)
      const [wd, pd] = [await b.downloadI32(quant(whole.down).qweight), await b.downloadI32(quant(part.down).qweight)];
      const cols = spec.intermediateSize / perWord, half = cols / 2;
      for (let n = 0; n < spec.hiddenSize; n++) assert.deepEqual(pd.subarray(n * half, (n + 1) * half), wd.subarray(n * cols + rank * half, n * cols + (rank + 1) * half), `down row ${n}`);
      assert.deepEqual(quant(part.down).shape, [spec.hiddenSize, spec.intermediateSize / 2]);
      assert.deepEqual(quant(part.up).shape, [spec.intermediateSize, spec.hiddenSize]);
    }
  });
}
