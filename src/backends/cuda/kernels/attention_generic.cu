// Paged attention for any head size up to 256 that the tuned kernels do not cover (8, 16, 24,
// 40, 112, ...): simple and correct, not fast. Same semantics as attention_prefill.cu
// (causal, chunked prefill, sliding window, ALiBi, softcap, GQA), any number of queries.
//
// Grid (numTokens, numHeads), 4 warps. Lane l holds dims l, l + 32, ... (DK of them, D <= 32 DK);
// warp w takes keys lo + w, lo + w + 4, ... with its own online softmax, merged at the end.
// An fp8 cache (C = kv_fp8_t): kScale folded into the query, vScale into the output.
#include "kv_fp8.cuh"

#define PGN_GENERIC_WARPS 4

template <typename T, typename C, int DK>
__device__ void attn_generic(T* out, const T* qkv, const C* kCache, const C* vCache, const int* cuSeqlensQ,
                             const int* contextLens, const int* blockTables, const float* alibiSlopes, int numSeqs,
                             int numHeads, int numKvHeads, int D, int maxBlocksPerSeq, int blockSize, float scale,
                             int window, float softcap, float kScale, float vScale) {
  constexpr int NW = PGN_GENERIC_WARPS;
  __shared__ float sm[NW], sl[NW];
  __shared__ float so[NW][32 * DK];
  const int t = blockIdx.x, head = blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (t >= cuSeqlensQ[numSeqs]) return;  // padding rows belong to no sequence
  // the sequence of query row t: the last s with cuSeqlensQ[s] <= t
  int lo = 0, hi = numSeqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (cuSeqlensQ[mid] <= t) lo = mid;
    else hi = mid - 1;
  }
  const int seq = lo;
  const int qLen = cuSeqlensQ[seq + 1] - cuSeqlensQ[seq];
  const int kvLen = contextLens[seq];
  const int pos = kvLen - qLen + (t - cuSeqlensQ[seq]);
  const int jBegin = window > 0 ? max(0, pos - window + 1) : 0;
  const int kvHead = head / (numHeads / numKvHeads);
  const int kvStride = numKvHeads * D;
  const int* table = blockTables + (long long)seq * maxBlocksPerSeq;
  const bool plain = softcap == 0.f && alibiSlopes == nullptr;
  const float slope = alibiSlopes ? alibiSlopes[head] : 0.f;

  const T* q = qkv + (long long)t * (numHeads + 2 * numKvHeads) * D + head * D;
  float qf[DK], acc[DK];
#pragma unroll
  for (int k = 0; k < DK; k++) {
    const int d = lane + 32 * k;
    qf[k] = d < D ? to_f32(q[d]) * (plain ? scale * PGN_LOG2E : scale) * kScale : 0.f;
    acc[k] = 0.f;
  }
  float m = PGN_NEG_INF, l = 0.f;
  for (int j = jBegin + warp; j <= pos; j += NW) {
    const long long row = (long long)table[j / blockSize] * blockSize + j % blockSize;
    const C* kr = kCache + row * kvStride + kvHead * D;
    const C* vr = vCache + row * kvStride + kvHead * D;
    float dot = 0.f;
#pragma unroll
    for (int k = 0; k < DK; k++) {
      const int d = lane + 32 * k;
      if (d < D) dot += qf[k] * kv_to_f32(kr[d]);
    }
    float s = warp_sum(dot);
    if (!plain) {
      if (softcap > 0.f) s = softcap * tanhf(s / softcap);
      s = (s + slope * (float)(j - pos)) * PGN_LOG2E;
    }
    const float mNew = fmaxf(m, s);
    const float alpha = exp2f(m - mNew), p = exp2f(s - mNew);
    m = mNew;
    l = l * alpha + p;
#pragma unroll
    for (int k = 0; k < DK; k++) {
      const int d = lane + 32 * k;
      acc[k] = acc[k] * alpha + (d < D ? p * kv_to_f32(vr[d]) : 0.f);
    }
  }
  if (lane == 0) { sm[warp] = m; sl[warp] = l; }
#pragma unroll
  for (int k = 0; k < DK; k++) so[warp][lane + 32 * k] = acc[k];
  __syncthreads();
  if (warp != 0) return;
  float M = PGN_NEG_INF;
#pragma unroll
  for (int w = 0; w < NW; w++) M = fmaxf(M, sm[w]);
  const float mUse = M == PGN_NEG_INF ? 0.f : M;
  float L = 0.f;
#pragma unroll
  for (int w = 0; w < NW; w++) L += sl[w] * exp2f(sm[w] - mUse);
  const float inv = L > 0.f ? vScale / L : 0.f;
  T* o = out + (long long)t * numHeads * D + head * D;
#pragma unroll
  for (int k = 0; k < DK; k++) {
    const int d = lane + 32 * k;
    if (d >= D) continue;
    float A = 0.f;
#pragma unroll
    for (int w = 0; w < NW; w++) A += so[w][d] * exp2f(sm[w] - mUse);
    o[d] = from_f32<T>(A * inv);
  }
}

#define PGN_GENERIC(T, S, DK)                                                                                    \
  extern "C" __global__ void __launch_bounds__(32 * PGN_GENERIC_WARPS) attn_generic_##S##_k##DK(                 \
      T* out, const T* qkv, const T* kCache, const T* vCache, const int* cuSeqlensQ, const int* contextLens,      \
      const int* blockTables, const float* alibiSlopes, int numSeqs, int numHeads, int numKvHeads, int D,        \
      int maxBlocksPerSeq, int blockSize, float scale, int window, float softcap) {                              \
    PGN_PDL_WAIT();                                                                                              \
    attn_generic<T, T, DK>(out, qkv, kCache, vCache, cuSeqlensQ, contextLens, blockTables, alibiSlopes, numSeqs, \
                           numHeads, numKvHeads, D, maxBlocksPerSeq, blockSize, scale, window, softcap, 1.f, 1.f); \
    PGN_PDL_TRIGGER();                                                                                           \
  }                                                                                                              \
  extern "C" __global__ void __launch_bounds__(32 * PGN_GENERIC_WARPS) attn_generic_fp8_##S##_k##DK(             \
      T* out, const T* qkv, const kv_fp8_t* kCache, const kv_fp8_t* vCache, const int* cuSeqlensQ,               \
      const int* contextLens, const int* blockTables, const float* alibiSlopes, int numSeqs, int numHeads,       \
      int numKvHeads, int D, int maxBlocksPerSeq, int blockSize, float scale, int window, float softcap,         \
      float kScale, float vScale) {                                                                              \
    PGN_PDL_WAIT();                                                                                              \
    attn_generic<T, kv_fp8_t, DK>(out, qkv, kCache, vCache, cuSeqlensQ, contextLens, blockTables, alibiSlopes,   \
                                  numSeqs, numHeads, numKvHeads, D, maxBlocksPerSeq, blockSize, scale, window,   \
                                  softcap, kScale, vScale);                                                      \
    PGN_PDL_TRIGGER();                                                                                           \
  }
#define PGN_GENERIC_ALL(T, S) PGN_GENERIC(T, S, 1) PGN_GENERIC(T, S, 2) PGN_GENERIC(T, S, 4) PGN_GENERIC(T, S, 8)

PGN_HALF_TYPES(PGN_GENERIC_ALL)
