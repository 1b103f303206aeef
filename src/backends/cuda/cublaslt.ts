/**
 * GEMMs through cuBLASLt: out [M, N] = x [M, K] @ w [N, K]^T (+ bias [N]), the "TN" layout
 * of PyTorch / HF linear weights. BF16 or FP16 operands, f32 accumulation, output in the
 * operand dtype or f32 (logits). In cuBLAS's column-major terms: A = w (K x N, transposed),
 * B = x (K x M), D = out (N x M); the bias epilogue adds bias[n] to every column.
 *
 * A plan (descriptors, layouts and the heuristic's first algorithm) is made once per
 * (dtypes, M, N, K) and cached; the bias pointer is set on the descriptor per call.
 */
import koffi from 'koffi';
import { PeregrineError } from '../../errors.js';
import { HANDLE, type DevicePtr, type Handle } from './driver.js';
import { bindLibrary, CUBLASLT, findLibrary } from './library-finder.js';
import type { CudaStream } from './stream.js';

export type GemmDtype = 'bf16' | 'f16' | 'f32';

const CUDA_R = { f32: 0, f16: 2, bf16: 14 } as const;
const CUBLAS_COMPUTE_32F = 68;
const DESC = { TRANSA: 3, TRANSB: 4, EPILOGUE: 7, BIAS_POINTER: 8, BIAS_DATA_TYPE: 26 } as const;
const PREF_MAX_WORKSPACE_BYTES = 1;
const CUBLAS_OP_N = 0;
const CUBLAS_OP_T = 1;
const EPILOGUE_DEFAULT = 1;
const EPILOGUE_BIAS = 4;
/** sizeof(cublasLtMatmulHeuristicResult_t): algo (64 B), workspaceSize, state, wavesCount, reserved[4] */
const HEURISTIC_RESULT_BYTES = 96;
const MAX_PLANS = 512;
void HANDLE; // registers the handle type used in the signatures below

const H = 'PgnCuHandle';
const SIGNATURES = {
  cublasLtCreate: `int cublasLtCreate(_Out_ ${H} *handle)`,
  cublasLtDestroy: `int cublasLtDestroy(${H} handle)`,
  cublasLtGetVersion: 'size_t cublasLtGetVersion()',
  cublasLtGetStatusName: 'const char *cublasLtGetStatusName(int status)',
  cublasLtGetStatusString: 'const char *cublasLtGetStatusString(int status)',
  cublasLtMatmulDescCreate: `int cublasLtMatmulDescCreate(_Out_ ${H} *desc, int computeType, int scaleType)`,
  cublasLtMatmulDescDestroy: `int cublasLtMatmulDescDestroy(${H} desc)`,
  cublasLtMatmulDescSetAttribute: `int cublasLtMatmulDescSetAttribute(${H} desc, int attr, const void *buf, size_t size)`,
  cublasLtMatrixLayoutCreate: `int cublasLtMatrixLayoutCreate(_Out_ ${H} *layout, int type, uint64_t rows, uint64_t cols, int64_t ld)`,
  cublasLtMatrixLayoutDestroy: `int cublasLtMatrixLayoutDestroy(${H} layout)`,
  cublasLtMatmulPreferenceCreate: `int cublasLtMatmulPreferenceCreate(_Out_ ${H} *pref)`,
  cublasLtMatmulPreferenceDestroy: `int cublasLtMatmulPreferenceDestroy(${H} pref)`,
  cublasLtMatmulPreferenceSetAttribute: `int cublasLtMatmulPreferenceSetAttribute(${H} pref, int attr, const void *buf, size_t size)`,
  cublasLtMatmulAlgoGetHeuristic: `int cublasLtMatmulAlgoGetHeuristic(${H} handle, ${H} desc, ${H} a, ${H} b, ${H} c, ${H} d, ${H} pref, int requested, void *results, _Out_ int *returned)`,
  cublasLtMatmul: `int cublasLtMatmul(${H} handle, ${H} desc, const void *alpha, uint64_t a, ${H} aDesc, uint64_t b, ${H} bDesc, const void *beta, uint64_t c, ${H} cDesc, uint64_t d, ${H} dDesc, const void *algo, uint64_t workspace, size_t workspaceBytes, ${H} stream)`,
} as const;

type Lt = ReturnType<typeof bindLibrary<typeof SIGNATURES>>;

let lib: Lt | null = null;

/** Binds cuBLASLt once; `driverMajor` (13 for a CUDA 13 driver) rules out newer majors it cannot run. */
export function loadLt(driverMajor: number): Lt {
  if (lib) return lib;
  const versions = CUBLASLT.versions.filter((v) => v <= driverMajor);
  lib = bindLibrary(findLibrary({ ...CUBLASLT, versions: versions.length > 0 ? versions : CUBLASLT.versions }), SIGNATURES);
  return lib;
}

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

interface Plan {
  readonly desc: Handle;
  readonly layouts: readonly [Handle, Handle, Handle];
  readonly algo: unknown;
  readonly workspaceBytes: number;
}

export class CublasLt {
  readonly #lt: Lt;
  readonly #handle: Handle;
  readonly #workspace: DevicePtr;
  readonly #workspaceBytes: number;
  readonly #plans = new Map<string, Plan>();
  readonly #alpha: unknown;
  readonly #beta: unknown;
  readonly #i32: unknown;
  readonly #i32View: DataView;
  readonly #u64: unknown;
  readonly #u64View: DataView;
  #disposed = false;

  /** Needs the CUDA context current. `workspace` is device memory of `workspaceBytes`. */
  constructor(workspace: DevicePtr, workspaceBytes: number, driverMajor: number) {
    this.#lt = loadLt(driverMajor);
    this.#workspace = workspace;
    this.#workspaceBytes = workspaceBytes;
    const box: Handle[] = [null];
    this.#check(this.#lt.cublasLtCreate(box), 'cublasLtCreate');
    this.#handle = box[0];
    this.#alpha = koffi.alloc('float', 1);
    this.#beta = koffi.alloc('float', 1);
    new DataView(koffi.view(this.#alpha, 4)).setFloat32(0, 1, true);
    new DataView(koffi.view(this.#beta, 4)).setFloat32(0, 0, true);
    this.#i32 = koffi.alloc('int32_t', 1);
    this.#i32View = new DataView(koffi.view(this.#i32, 4));
    this.#u64 = koffi.alloc('uint64_t', 1);
    this.#u64View = new DataView(koffi.view(this.#u64, 8));
  }

  get libraryPath(): string {
    return this.#lt.path;
  }

  get version(): number {
    return Number(this.#lt.cublasLtGetVersion());
  }

  get numPlans(): number {
    return this.#plans.size;
  }

  /** Queues out = x @ w^T (+ bias) on `stream`. */
  matmul(a: GemmArgs, stream: CudaStream): void {
    const plan = this.#plan(a);
    if (a.bias !== null) this.#setU64(plan.desc, DESC.BIAS_POINTER, a.bias);
    const rc = this.#lt.cublasLtMatmul(
      this.#handle, plan.desc, this.#alpha, a.w, plan.layouts[0], a.x, plan.layouts[1], this.#beta,
      a.out, plan.layouts[2], a.out, plan.layouts[2], plan.algo, this.#workspace, plan.workspaceBytes, stream.handle,
    );
    if (rc !== 0) this.#check(rc, `cublasLtMatmul(M=${a.M}, N=${a.N}, K=${a.K}, ${a.dtype} -> ${a.outDtype})`);
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const p of this.#plans.values()) this.#destroyPlan(p);
    this.#plans.clear();
    this.#lt.cublasLtDestroy(this.#handle);
    for (const p of [this.#alpha, this.#beta, this.#i32, this.#u64]) koffi.free(p);
  }

  #plan(a: GemmArgs): Plan {
    const key = `${a.dtype}:${a.outDtype}:${a.bias !== null ? 'b' : '-'}:${a.M}:${a.N}:${a.K}`;
    const hit = this.#plans.get(key);
    if (hit) return hit;
    const lt = this.#lt;
    const descBox: Handle[] = [null];
    this.#check(lt.cublasLtMatmulDescCreate(descBox, CUBLAS_COMPUTE_32F, CUDA_R.f32), 'cublasLtMatmulDescCreate');
    const desc = descBox[0];
    this.#setI32(desc, DESC.TRANSA, CUBLAS_OP_T);
    this.#setI32(desc, DESC.TRANSB, CUBLAS_OP_N);
    this.#setI32(desc, DESC.EPILOGUE, a.bias !== null ? EPILOGUE_BIAS : EPILOGUE_DEFAULT);
    if (a.bias !== null) {
      this.#setI32(desc, DESC.BIAS_DATA_TYPE, CUDA_R[a.outDtype]);
      this.#setU64(desc, DESC.BIAS_POINTER, a.bias);
    }
    const layout = (type: number, rows: number, cols: number, ld: number): Handle => {
      const box: Handle[] = [null];
      this.#check(lt.cublasLtMatrixLayoutCreate(box, type, rows, cols, ld), 'cublasLtMatrixLayoutCreate');
      return box[0];
    };
    const layouts = [layout(CUDA_R[a.dtype], a.K, a.N, a.K), layout(CUDA_R[a.dtype], a.K, a.M, a.K), layout(CUDA_R[a.outDtype], a.N, a.M, a.N)] as const;

    const prefBox: Handle[] = [null];
    this.#check(lt.cublasLtMatmulPreferenceCreate(prefBox), 'cublasLtMatmulPreferenceCreate');
    const pref = prefBox[0];
    this.#u64View.setBigUint64(0, BigInt(this.#workspaceBytes), true);
    this.#check(lt.cublasLtMatmulPreferenceSetAttribute(pref, PREF_MAX_WORKSPACE_BYTES, this.#u64, 8), 'cublasLtMatmulPreferenceSetAttribute');
    const results = koffi.alloc('uint8_t', HEURISTIC_RESULT_BYTES);
    const returned: number[] = [0];
    const rc = lt.cublasLtMatmulAlgoGetHeuristic(this.#handle, desc, layouts[0], layouts[1], layouts[2], layouts[2], pref, 1, results, returned);
    lt.cublasLtMatmulPreferenceDestroy(pref);
    if (rc !== 0 || returned[0] === 0) {
      this.#destroyPlan({ desc, layouts, algo: results, workspaceBytes: 0 });
      const why = rc !== 0 ? this.#statusText(rc) : 'no algorithm returned';
      throw new PeregrineError('PGN_ERR_CUBLAS', `cuBLASLt has no algorithm for M=${a.M} N=${a.N} K=${a.K} (${a.dtype} -> ${a.outDtype}${a.bias !== null ? ', bias' : ''}): ${why}`, { M: a.M, N: a.N, K: a.K, status: rc });
    }
    const view = new DataView(koffi.view(results, HEURISTIC_RESULT_BYTES));
    const plan: Plan = { desc, layouts, algo: results, workspaceBytes: Math.min(Number(view.getBigUint64(64, true)), this.#workspaceBytes) };
    if (this.#plans.size >= MAX_PLANS) {
      const [oldKey, old] = this.#plans.entries().next().value as [string, Plan];
      this.#plans.delete(oldKey);
      this.#destroyPlan(old);
    }
    this.#plans.set(key, plan);
    return plan;
  }

  #destroyPlan(p: Plan): void {
    this.#lt.cublasLtMatmulDescDestroy(p.desc);
    for (const l of p.layouts) this.#lt.cublasLtMatrixLayoutDestroy(l);
    koffi.free(p.algo);
  }

  #setI32(desc: Handle, attr: number, value: number): void {
    this.#i32View.setInt32(0, value, true);
    this.#check(this.#lt.cublasLtMatmulDescSetAttribute(desc, attr, this.#i32, 4), `cublasLtMatmulDescSetAttribute(${attr})`);
  }

  #setU64(desc: Handle, attr: number, value: number): void {
    this.#u64View.setBigUint64(0, BigInt(value), true);
    this.#check(this.#lt.cublasLtMatmulDescSetAttribute(desc, attr, this.#u64, 8), `cublasLtMatmulDescSetAttribute(${attr})`);
  }

  #statusText(status: number): string {
    return `${this.#lt.cublasLtGetStatusName(status) ?? 'CUBLAS_STATUS'} (${status}): ${this.#lt.cublasLtGetStatusString(status) ?? ''}`;
  }

  #check(status: number, call: string): void {
    if (status !== 0) throw new PeregrineError('PGN_ERR_CUBLAS', `${call} failed: ${this.#statusText(status)}`, { call, status });
  }
}
