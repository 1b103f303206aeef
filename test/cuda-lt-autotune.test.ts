// cuBLASLt plans and their autotuning on the CPU, through a fake cuBLASLt binding and a fake driver clock: the
// heuristic's results kept as candidates, the one in use copied with its workspace size, the fastest kept, refused
// candidates skipped (the GPU test in test/gpu/cuda-ops.test.ts runs it on the real library).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import koffi from 'koffi';
import type { Driver } from '../src/backends/cuda/driver.js';
import { autotunePlan, autotuneWanted } from '../src/backends/cuda/lt-autotune.js';
import type { Lt } from '../src/backends/cuda/lt-library.js';
import { isRefusal, LtPlans, type LtPlan, type PlanSpec } from '../src/backends/cuda/lt-plans.js';
import type { CudaStream } from '../src/backends/cuda/stream.js';
import { withEnv } from './helpers/env.js';

const RESULT_BYTES = 96;
const NOT_SUPPORTED = 15;

/** A cuBLASLt whose heuristic offers `offered` algorithms (byte 0: the index; workspace (i + 1) KiB) and whose matmul reports the algorithm it ran. */
function fakeLt(offered: number, ran: number[], refuse: (algo: number) => boolean = () => false): Lt {
  const box = (b: unknown[]) => { b[0] = {}; return 0; };
  const fake = {
    cublasLtCreate: box, cublasLtDestroy: () => 0, cublasLtGetVersion: () => 130000,
    cublasLtGetStatusName: (s: number) => `STATUS_${s}`, cublasLtGetStatusString: () => 'fake',
    cublasLtMatmulDescCreate: box, cublasLtMatmulDescDestroy: () => 0, cublasLtMatmulDescSetAttribute: () => 0,
    cublasLtMatrixLayoutCreate: box, cublasLtMatrixLayoutDestroy: () => 0,
    cublasLtMatmulPreferenceCreate: box, cublasLtMatmulPreferenceDestroy: () => 0, cublasLtMatmulPreferenceSetAttribute: () => 0,
    cublasLtMatmulAlgoGetHeuristic: (_h: unknown, _d: unknown, _a: unknown, _b: unknown, _c: unknown, _dd: unknown, _p: unknown, requested: number, results: unknown, returned: number[]) => {
      const n = Math.min(requested, offered);
      const view = new DataView(koffi.view(results, requested * RESULT_BYTES));
      for (let i = 0; i < n; i++) {
        view.setUint8(i * RESULT_BYTES, i);
        view.setBigUint64(i * RESULT_BYTES + 64, BigInt((i + 1) * 1024), true);
      }
      returned[0] = n;
      return 0;
    },
    cublasLtMatmul: (...args: unknown[]) => {
      const algo = new Uint8Array(koffi.view(args[12], RESULT_BYTES))[0]!;
      ran.push(algo);
      return refuse(algo) ? NOT_SUPPORTED : 0;
    },
  };
  return fake as unknown as Lt;
}

const SPEC: PlanSpec = { inType: 14, outType: 14, M: 8, N: 256, K: 512, ldOut: 256, attrs: [] };
const algoOf = (plan: LtPlan) => new Uint8Array(koffi.view(plan.algo, RESULT_BYTES))[0];

test('makePlan keeps up to `candidates` heuristic results, the best in use; useCandidate switches algorithm and workspace', () => {
  const lt = new LtPlans(0, 2048, 13, fakeLt(3, []));
  const one = lt.makePlan(SPEC);
  assert.ok(!isRefusal(one));
  assert.deepEqual([one.candidates.count, algoOf(one), one.workspaceBytes, one.tuned], [1, 0, 1024, false]);
  const plan = lt.makePlan(SPEC, 8);
  assert.ok(!isRefusal(plan));
  assert.equal(plan.candidates.count, 3, 'as many as the heuristic gave');
  lt.useCandidate(plan, 2);
  assert.deepEqual([algoOf(plan), plan.workspaceBytes], [2, 2048], 'workspace capped at the plans\' own');
  lt.useCandidate(plan, 1);
  assert.deepEqual([algoOf(plan), plan.workspaceBytes], [1, 2048]);
  assert.throws(() => lt.useCandidate(plan, 3), /no candidate 3 of 3/);
  lt.add('k', plan);
  lt.dispose();
});

test('autotunePlan keeps the fastest candidate and skips those cuBLASLt refuses', () => {
  const ran: number[] = [];
  const lt = new LtPlans(0, 1 << 20, 13, fakeLt(4, ran, (a) => a === 1));
  const plan = lt.makePlan(SPEC, 8);
  assert.ok(!isRefusal(plan));
  // a fake device clock: each run of algorithm a takes cost[a] ms; events read the clock when recorded
  const cost = [3, 0.5, 2, 1];
  let clock = 0;
  const recorded = new Map<object, number>();
  const drv = {
    cuEventCreate: (b: unknown[]) => { b[0] = {}; return 0; },
    cuEventRecord: (e: object) => { recorded.set(e, clock); return 0; },
    cuEventElapsedTime: (b: number[], s: object, e: object) => { b[0] = recorded.get(e)! - recorded.get(s)!; return 0; },
    cuEventDestroy: () => 0,
  } as unknown as Driver;
  const stream = { synchronize() {}, isCapturing: false, handle: null } as unknown as CudaStream;
  const ms = autotunePlan(lt, plan, drv, stream, () => {
    const rc = lt.matmul(plan, 0, 0, 0, stream);
    if (rc === 0) clock += cost[algoOf(plan)!]!;
    return rc;
  });
  assert.deepEqual(ms, [3, Infinity, 2, 1], 'ms a run; the refused candidate Infinity');
  assert.deepEqual([algoOf(plan), plan.workspaceBytes, plan.tuned], [3, 4096, true], 'the fastest that runs stays in use');
  assert.deepEqual(ran, [0, 0, 0, 0, 1, 2, 2, 2, 2, 3, 3, 3, 3], 'a warm-up and 3 timed runs each; a refusal stops a candidate');
  lt.dispose();
});

test('autotuning is opt-in, for decode-sized and power-of-two row counts', async () => {
  await withEnv('PEREGRINE_GEMM_AUTOTUNE', undefined, () => assert.equal(autotuneWanted(1), false));
  await withEnv('PEREGRINE_GEMM_AUTOTUNE', '1', () => {
    assert.deepEqual([1, 5, 8, 16, 48, 1024, 8192, 16384].map(autotuneWanted), [true, true, true, true, false, true, true, false]);
  });
});
