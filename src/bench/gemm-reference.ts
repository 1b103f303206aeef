/**
 * cuBLASLt alone on the linears a profile saw (cublaslt.ts directly, no GEMV and no argument
 * checks): the same M x N x K and the same weights in the same order as the step, so weights
 * come from HBM as they do there, timed as one CUDA graph per linear. CUDA only: load it
 * with a dynamic import.
 */
import { isQuantizedWeight, type Tensor } from '../backends/backend.js';
import { CublasLt } from '../backends/cuda/cublaslt.js';
import type { CudaBackend } from '../backends/cuda/cuda-backend.js';
import { gemvTakes } from '../backends/cuda/cuda-gemv.js';
import { asCuda } from '../backends/cuda/cuda-tensor.js';
import type { LinearShape } from './op-profiler.js';

const WORKSPACE_BYTES = 32 * 2 ** 20;

export interface GemmReference {
  readonly op: string;
  readonly M: number;
  readonly N: number;
  readonly K: number;
  /** 'GEMV' or 'cuBLASLt': what `linear` takes for this shape */
  readonly path: string;
  /** per call, cuBLASLt alone; null for quantized weights */
  readonly cublasLtMs: number | null;
}

/**
 * @param graphMs device ms of one replay of the work `fn` queues, captured as a CUDA graph
 */
export async function cublasLtReference(be: CudaBackend, linears: readonly LinearShape[], graphMs: (fn: () => void) => Promise<number>): Promise<GemmReference[]> {
  const workspace = be.allocator.alloc(WORKSPACE_BYTES);
  const blas = new CublasLt(workspace, WORKSPACE_BYTES, Math.floor(be.props.driverVersion / 1000));
  const out: GemmReference[] = [];
  try {
    for (const l of linears) {
      const plain = l.weights.filter((w): w is Tensor => !isQuantizedWeight(w) && (w.dtype === 'bf16' || w.dtype === 'f16'));
      const outDtype = l.outDtype === 'i32' ? null : l.outDtype;
      if (plain.length !== l.weights.length || !outDtype) {
        out.push({ op: l.op, M: l.M, N: l.N, K: l.K, path: 'quantized', cublasLtMs: null });
        continue;
      }
      const path = gemvTakes(l.M, l.N, l.K, outDtype) ? 'GEMV' : 'cuBLASLt';
      const dtype = plain[0]!.dtype as 'bf16' | 'f16';
      const x = be.empty([l.M, l.K], dtype), y = be.empty([l.M, l.N], outDtype);
      try {
        be.fillUniform(x, 7);
        const launch = () => {
          for (const w of plain) blas.matmul({ out: asCuda(y, 'ref', 'out').ptr, outDtype, x: asCuda(x, 'ref', 'x').ptr, w: asCuda(w, 'ref', 'w').ptr, dtype, bias: null, M: l.M, N: l.N, K: l.K }, be.stream);
        };
        launch(); // plans outside the graph
        be.stream.synchronize();
        out.push({ op: l.op, M: l.M, N: l.N, K: l.K, path, cublasLtMs: (await graphMs(launch)) / plain.length });
      } finally {
        be.free(x);
        be.free(y);
      }
    }
  } finally {
    be.stream.synchronize();
    blas.dispose();
    be.allocator.free(workspace);
  }
  return out;
}
