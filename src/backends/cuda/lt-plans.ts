/**
 * The cuBLASLt machinery under cublaslt.ts (plain GEMMs) and cuda-quant-gemm.ts (GEMMs of quantized linears):
 * one handle with its workspace and alpha = 1 / beta = 0, and plans cached by key.
 * Every plan is "TN" with f32 compute: A = w [N, K] row-major read as K x N transposed, B = x [M, K] as K x M,
 * C = D = out as N x M with leading dimension ldOut. A plan is the descriptor, the three layouts and the
 * heuristic's first algorithm; `makePlan` answers a Refusal (the step that said no) instead when cuBLASLt
 * refuses the configuration, and each caller decides whether that throws or falls back.
 */
import koffi from 'koffi';
import { PeregrineError } from '../../errors.js';
import type { DevicePtr, Handle } from './driver.js';
import { loadLt, type Lt } from './lt-library.js';
import type { CudaStream } from './stream.js';

/** cudaDataType_t */
export const CUDA_R = { f32: 0, f16: 2, bf16: 14, e4m3: 28 } as const;
/** cublasLtMatmulDescAttributes_t */
export const DESC = {
  TRANSA: 3, TRANSB: 4, EPILOGUE: 7, BIAS_POINTER: 8, A_SCALE_POINTER: 17, B_SCALE_POINTER: 18, BIAS_DATA_TYPE: 26,
  A_SCALE_MODE: 31, B_SCALE_MODE: 32,
} as const;
const PREF = { MAX_WORKSPACE_BYTES: 1, MIN_ALIGNMENT_A: 5, MIN_ALIGNMENT_B: 6, MIN_ALIGNMENT_C: 7, MIN_ALIGNMENT_D: 8 } as const;
const CUBLAS_COMPUTE_32F = 68;
const CUBLAS_OP = { N: 0, T: 1 } as const;
/** cublasLtMatmulHeuristicResult_t: algo (64 B), workspaceSize (size_t), state, wavesCount, reserved[4] */
const HEURISTIC_RESULT = { BYTES: 96, WORKSPACE_OFFSET: 64 } as const;
const MAX_PLANS = 512;

export interface LtPlan {
  readonly desc: Handle;
  readonly layouts: readonly Handle[];
  /** the heuristic result, whose first 64 bytes are the algorithm */
  readonly algo: unknown;
  readonly workspaceBytes: number;
  /** a matmul with this plan has succeeded */
  proven: boolean;
}

/** A descriptor attribute set before the heuristic; `name` names it when cuBLASLt refuses it. */
export interface DescAttr {
  readonly name: string;
  readonly attr: number;
  readonly value: number;
  /** 4: int32 (enums), 8: uint64 (device pointers) */
  readonly bytes: 4 | 8;
}

export interface PlanSpec {
  /** cudaDataType of A and B, and of C / D */
  readonly inType: number;
  readonly outType: number;
  readonly M: number;
  readonly N: number;
  readonly K: number;
  readonly ldOut: number;
  /** set after TRANSA / TRANSB, in order */
  readonly attrs: readonly DescAttr[];
  /** asked of A, B, C and D when set; cuBLASLt's default is 256 bytes */
  readonly minAlignmentBytes?: number;
}

/** Why cuBLASLt refused a plan: `reason` names the step and its status ('no algorithm' when the heuristic had none). */
export interface Refusal {
  readonly reason: string;
  /** the cuBLASLt status; 0 when the heuristic returned no algorithm */
  readonly status: number;
}

export function isRefusal(p: LtPlan | Refusal): p is Refusal {
  return 'reason' in p;
}

/** One cuBLASLt handle with its workspace and its plans, capped at MAX_PLANS (the oldest goes first). */
export class LtPlans {
  readonly #lt: Lt;
  readonly #handle: Handle;
  readonly workspace: DevicePtr;
  readonly #workspaceBytes: number;
  readonly #plans = new Map<string, LtPlan>();
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
    this.workspace = workspace;
    this.#workspaceBytes = workspaceBytes;
    const box: Handle[] = [null];
    this.check(this.#lt.cublasLtCreate(box), 'cublasLtCreate');
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

  get(key: string): LtPlan | undefined {
    return this.#plans.get(key);
  }

  /** Caches `plan` under `key`, destroying the oldest plan when the cache is full. */
  add(key: string, plan: LtPlan): LtPlan {
    if (this.#plans.size >= MAX_PLANS) {
      const [oldKey, old] = this.#plans.entries().next().value as [string, LtPlan];
      this.#plans.delete(oldKey);
      this.#destroyPlan(old);
    }
    this.#plans.set(key, plan);
    return plan;
  }

  /** Forgets and destroys the plan of `key`. */
  drop(key: string): void {
    const plan = this.#plans.get(key);
    if (!plan) return;
    this.#plans.delete(key);
    this.#destroyPlan(plan);
  }

  /** A new plan, not cached; a Refusal when cuBLASLt says no. Throws PGN_ERR_CUBLAS when it cannot make a descriptor. */
  makePlan(s: PlanSpec): LtPlan | Refusal {
    const descBox: Handle[] = [null];
    this.check(this.#lt.cublasLtMatmulDescCreate(descBox, CUBLAS_COMPUTE_32F, CUDA_R.f32), 'cublasLtMatmulDescCreate');
    const parts = { desc: descBox[0], layouts: [] as Handle[], algo: koffi.alloc('uint8_t', HEURISTIC_RESULT.BYTES) };
    let made = false;
    try {
      const refusal = this.#query(parts.desc, parts.layouts, parts.algo, s);
      if (refusal) return refusal;
      const workspaceBytes = Number(new DataView(koffi.view(parts.algo, HEURISTIC_RESULT.BYTES)).getBigUint64(HEURISTIC_RESULT.WORKSPACE_OFFSET, true));
      made = true;
      return { ...parts, workspaceBytes: Math.min(workspaceBytes, this.#workspaceBytes), proven: false };
    } finally {
      if (!made) this.#destroyPlan(parts);
    }
  }

  /** Sets a device pointer attribute (bias, scales) on a plan's descriptor; throws PGN_ERR_CUBLAS. */
  setPointer(plan: LtPlan, attr: number, ptr: DevicePtr): void {
    this.check(this.#setDesc(plan.desc, attr, ptr, 8), `cublasLtMatmulDescSetAttribute(${attr})`);
  }

  /** Queues out = x @ w^T with `plan` on `stream` (out is both C and D); answers cuBLASLt's status. */
  matmul(plan: LtPlan, w: DevicePtr, x: DevicePtr, out: DevicePtr, stream: CudaStream): number {
    stream.afterLibraryKernel = true;
    return this.#lt.cublasLtMatmul(
      this.#handle, plan.desc, this.#alpha, w, plan.layouts[0], x, plan.layouts[1], this.#beta,
      out, plan.layouts[2], out, plan.layouts[2], plan.algo, this.workspace, plan.workspaceBytes, stream.handle,
    ) as number;
  }

  statusName(status: number): string {
    return this.#lt.cublasLtGetStatusName(status) ?? 'CUBLAS_STATUS';
  }

  /** Throws PGN_ERR_CUBLAS naming `call` and cuBLASLt's status when `status` is not success. */
  check(status: number, call: string): void {
    if (status === 0) return;
    const text = `${this.statusName(status)} (${status}): ${this.#lt.cublasLtGetStatusString(status) ?? ''}`;
    throw new PeregrineError('PGN_ERR_CUBLAS', `${call} failed: ${text}`, { call, status });
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const p of this.#plans.values()) this.#destroyPlan(p);
    this.#plans.clear();
    this.#lt.cublasLtDestroy(this.#handle);
    for (const p of [this.#alpha, this.#beta, this.#i32, this.#u64]) koffi.free(p);
  }

  /** Sets the attributes, makes the layouts (pushed onto `layouts`) and asks the heuristic for one algorithm into `results`. */
  #query(desc: Handle, layouts: Handle[], results: unknown, s: PlanSpec): Refusal | null {
    const lt = this.#lt;
    const refused = (step: string, status: number): Refusal => ({ reason: `${step} (${status === 0 ? 'no algorithm' : lt.cublasLtGetStatusName(status) ?? status})`, status });
    const trans = [{ name: 'TRANSA/TRANSB', attr: DESC.TRANSA, value: CUBLAS_OP.T, bytes: 4 }, { name: 'TRANSA/TRANSB', attr: DESC.TRANSB, value: CUBLAS_OP.N, bytes: 4 }] as const;
    for (const a of [...trans, ...s.attrs]) {
      const rc = this.#setDesc(desc, a.attr, a.value, a.bytes);
      if (rc !== 0) return refused(`cublasLtMatmulDescSetAttribute(${a.name})`, rc);
    }
    for (const [type, rows, cols, ld] of [[s.inType, s.K, s.N, s.K], [s.inType, s.K, s.M, s.K], [s.outType, s.N, s.M, s.ldOut]]) {
      const box: Handle[] = [null];
      const rc = lt.cublasLtMatrixLayoutCreate(box, type, rows, cols, ld) as number;
      if (rc !== 0) return refused('cublasLtMatrixLayoutCreate', rc);
      layouts.push(box[0]);
    }
    const prefBox: Handle[] = [null];
    this.check(lt.cublasLtMatmulPreferenceCreate(prefBox), 'cublasLtMatmulPreferenceCreate');
    const pref = prefBox[0];
    try {
      const prefs: [number, number, 4 | 8][] = [[PREF.MAX_WORKSPACE_BYTES, this.#workspaceBytes, 8]];
      if (s.minAlignmentBytes !== undefined) for (const attr of [PREF.MIN_ALIGNMENT_A, PREF.MIN_ALIGNMENT_B, PREF.MIN_ALIGNMENT_C, PREF.MIN_ALIGNMENT_D]) prefs.push([attr, s.minAlignmentBytes, 4]);
      for (const [attr, value, bytes] of prefs) {
        const rc = lt.cublasLtMatmulPreferenceSetAttribute(pref, attr, this.#scalar(value, bytes), bytes) as number;
        if (rc !== 0) return refused(`cublasLtMatmulPreferenceSetAttribute(${attr})`, rc);
      }
      const returned: number[] = [0];
      const rc = lt.cublasLtMatmulAlgoGetHeuristic(this.#handle, desc, layouts[0], layouts[1], layouts[2], layouts[2], pref, 1, results, returned) as number;
      return rc !== 0 || returned[0] === 0 ? refused('cublasLtMatmulAlgoGetHeuristic', rc) : null;
    } finally {
      lt.cublasLtMatmulPreferenceDestroy(pref);
    }
  }

  #destroyPlan(p: Pick<LtPlan, 'desc' | 'layouts' | 'algo'>): void {
    this.#lt.cublasLtMatmulDescDestroy(p.desc);
    for (const l of p.layouts) this.#lt.cublasLtMatrixLayoutDestroy(l);
    koffi.free(p.algo);
  }

  #setDesc(desc: Handle, attr: number, value: number, bytes: 4 | 8): number {
    return this.#lt.cublasLtMatmulDescSetAttribute(desc, attr, this.#scalar(value, bytes), bytes) as number;
  }

  /** `value` written into the int32 or uint64 scratch, which is returned */
  #scalar(value: number, bytes: 4 | 8): unknown {
    if (bytes === 8) {
      this.#u64View.setBigUint64(0, BigInt(value), true);
      return this.#u64;
    }
    this.#i32View.setInt32(0, value, true);
    return this.#i32;
  }
}
