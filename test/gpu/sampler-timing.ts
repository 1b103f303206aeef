/**
 * The GPU sampling suites' timing tests (cuda-sampling, cuda-penalties): one sampler step over N x V random
 * logits for each sampling setup, timed on the host (sample + download), median of 5 after a warm-up, printed
 * as test diagnostics. Informational: speed is judged by benchmarks, not by tests.
 */
import type { CudaBackend } from '../../src/backends/cuda/cuda-backend.js';
import type { DeviceSampleRow } from '../../src/backends/cuda/cuda-sampler.js';
import type { SamplingParamsInit } from '../../src/sampling/index.js';

const RUNS = 5;

export async function timeSamplerSteps(gpu: CudaBackend, t: { diagnostic(message: string): void }, N: number, V: number, inits: readonly SamplingParamsInit[], rowsFor: (init: SamplingParamsInit) => DeviceSampleRow[]): Promise<void> {
  const sampler = gpu.createSampler(N, V);
  const logits = gpu.empty([N, V], 'f32');
  gpu.fillUniform(logits, 7, 8);
  try {
    for (const init of inits) {
      const rows = rowsFor(init);
      await sampler.sample(logits, rows);
      const times: number[] = [];
      for (let k = 0; k < RUNS; k++) {
        const t0 = performance.now();
        await sampler.sample(logits, rows);
        times.push(performance.now() - t0);
      }
      times.sort((a, b) => a - b);
      t.diagnostic(`${JSON.stringify(init)}: ${times[RUNS >> 1]!.toFixed(3)} ms per step (median of ${RUNS})`);
    }
  } finally {
    gpu.free(logits);
    sampler.dispose();
  }
}
