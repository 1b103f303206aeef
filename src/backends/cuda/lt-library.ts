/** The cuBLASLt binding (koffi), shared by every LtPlans: loaded once per process. */
import { HANDLE } from './driver.js';
import { bindLibrary, CUBLASLT, findLibrary } from './library-finder.js';

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

export type Lt = ReturnType<typeof bindLibrary<typeof SIGNATURES>>;

let lib: Lt | null = null;

/** Binds cuBLASLt once; `driverMajor` (13 for a CUDA 13 driver) rules out newer majors it cannot run. */
export function loadLt(driverMajor: number): Lt {
  if (lib) return lib;
  const versions = CUBLASLT.versions.filter((v) => v <= driverMajor);
  lib = bindLibrary(findLibrary({ ...CUBLASLT, versions: versions.length > 0 ? versions : CUBLASLT.versions }), SIGNATURES);
  return lib;
}
