/**
 * GEMMs through cuBLASLt: out [M, N] = x [M, K] @ w [N, K]^T (+ bias [N]), the "TN" layout
 * of PyTorch / HF linear weights. BF16 or FP16 operands, f32 accumulation, output in the
 * operand dtype or f32 (logits). In cuBLAS's column-major terms: A = w (K x N, transposed),
 * B = x (K x M), D = out (N x M); the bias epilogue adds bias[n] to every column.
 *
 * A plan (lt-plans.ts: descriptors, layouts and the heuristic's first algorithm) is made once
 * per (dtypes, bias, M, N, K) and cached; the bias pointer is set on the descriptor per call.
 */
import { PeregrineError } from '../../errors.js';
import type { DevicePtr } from './driver.js';
import { CUDA_R, DESC, isRefusal, LtPlans, type DescAttr, type LtPlan } from './lt-plans.js';
import type { CudaStream } from './stream.js';

export type GemmDtype = 'bf16' | 'f16' | 'f32';

const EPILOGUE_DEFAULT = 1;
const EPILOGUE_BIAS = 4;

export interface GemmArgs {
  readonly out: DevicePtr;
  readonly outDtype: GemmDtype;
  readonly x: DevicePtr;
  readonly w: DevicePtr;
  /** operand dtype of x and w */
  readonly dtype: 'bf16' | 'f16';
  /** bias [N] of dtype `outDtype`, or null */
  readonly bias: DevicePtr | null;
  readonly M: number;
  readonly N: number;
  readonly K: number;
}

export class CublasLt {
  readonly #lt: LtPlans;

  /** Needs the CUDA context current. `workspace` is device memory of `workspaceBytes`. */
  constructor(workspace: DevicePtr, workspaceBytes: number, driverMajor: number) {
    this.#lt = new LtPlans(workspace, workspaceBytes, driverMajor);
  }

  get libraryPath(): string {
    return this.#lt.libraryPath;
  }

  get version(): number {
    return this.#lt.version;
  }

  get numPlans(): number {
    return this.#lt.numPlans;
  }

  /** Queues out = x @ w^T (+ bias) on `stream`. */
  matmul(a: GemmArgs, stream: CudaStream): void {
    const plan = this.#plan(a);
    if (a.bias !== null) this.#lt.setPointer(plan, DESC.BIAS_POINTER, a.bias);
    const rc = this.#lt.matmul(plan, a.w, a.x, a.out, stream);
    if (rc !== 0) this.#lt.check(rc, `cublasLtMatmul(M=${a.M}, N=${a.N}, K=${a.K}, ${a.dtype} -> ${a.outDtype})`);
  }

  dispose(): void {
    this.#lt.dispose();
  }

  #plan(a: GemmArgs): LtPlan {
    const key = `${a.dtype}:${a.outDtype}:${a.bias !== null ? 'b' : '-'}:${a.M}:${a.N}:${a.K}`;
    const hit = this.#lt.get(key);
    if (hit) return hit;
    const attrs: DescAttr[] = [{ name: 'EPILOGUE', attr: DESC.EPILOGUE, value: a.bias !== null ? EPILOGUE_BIAS : EPILOGUE_DEFAULT, bytes: 4 }];
    if (a.bias !== null) {
      attrs.push({ name: 'BIAS_DATA_TYPE', attr: DESC.BIAS_DATA_TYPE, value: CUDA_R[a.outDtype], bytes: 4 });
      attrs.push({ name: 'BIAS_POINTER', attr: DESC.BIAS_POINTER, value: a.bias, bytes: 8 });
    }
    const made = this.#lt.makePlan({ inType: CUDA_R[a.dtype], outType: CUDA_R[a.outDtype], M: a.M, N: a.N, K: a.K, ldOut: a.N, attrs });
    if (isRefusal(made)) {
      const what = `M=${a.M} N=${a.N} K=${a.K} (${a.dtype} -> ${a.outDtype}${a.bias !== null ? ', bias' : ''})`;
      throw new PeregrineError('PGN_ERR_CUBLAS', `cuBLASLt has no algorithm for ${what}: ${made.reason}`, { M: a.M, N: a.N, K: a.K, status: made.status });
    }
    return this.#lt.add(key, made);
  }
}
