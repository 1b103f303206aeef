#pragma once
#include "common.cuh"

// What the decode attention kernels (attention_decode.cu, attention_decode_tc.cu) share: the keys a block's split
// reads, and the end of a block.

// The decode kernels' parameters (keep in step with ATTN_DECODE in kernels.ts); C is the cache's element type.
// The fp8-cache kernels take (kScale, vScale) after them; the device functions always do.
#define PGN_DECODE_PARAMS(T, C)                                                                                  \
  T *out, float *partialO, float *partialML, const T *qkv, const C *kCache, const C *vCache,                     \
      const int *cuSeqlensQ, const int *contextLens, const int *blockTables, const float *alibiSlopes,           \
      int numHeads, int numKvHeads, int maxBlocksPerSeq, int blockSize, float scale, int window, float softcap,  \
      int numSplits
#define PGN_DECODE_ARGS                                                                                          \
  out, partialO, partialML, qkv, kCache, vCache, cuSeqlensQ, contextLens, blockTables, alibiSlopes, numHeads,    \
      numKvHeads, maxBlocksPerSeq, blockSize, scale, window, softcap, numSplits

// Sequence seq's query row and position and the keys [jBegin, jEnd) of split `split`: its keys [kvBegin, kvLen)
// (kvBegin > 0 with a sliding window) cut into numSplits equal ranges.
struct DecodeKeys {
  int qRow, pos, jBegin, jEnd;
};
__device__ __forceinline__ DecodeKeys decode_split_keys(const int* cuSeqlensQ, const int* contextLens, int seq, int split,
                                                        int numSplits, int window) {
  const int kvLen = contextLens[seq];
  const int kvBegin = window > 0 ? max(0, kvLen - window) : 0;
  const int splitKeys = (kvLen - kvBegin + numSplits - 1) / numSplits;
  const int jBegin = kvBegin + split * splitKeys;
  return {cuSeqlensQ[seq], kvLen - 1, jBegin, min(jBegin + splitKeys, kvLen)};
}

// The end of a decode attention block: its NW warps' softmax states, in shared memory as m / l [NW][R] and
// accumulators [NW][R][D] (row r = query head h0 + r), merged for the block's nh heads, one thread per
// (head, d). numSplits == 1 writes `out`; otherwise the split's unnormalised accumulator goes to partialO
// [numSeqs, numHeads, numSplits, D] and (max, sum) in the log2 domain to partialML [.., 2], for
// attn_decode_combine.
template <typename T, int NW, int R>
__device__ __forceinline__ void decode_merge_warps(T* out, float* partialO, float* partialML, const float (*sm)[R],
                                                   const float (*sl)[R], const float* so, int nh, int h0, int D,
                                                   int numHeads, int qRow, int seq, int split, int numSplits,
                                                   float vScale) {
  for (int i = threadIdx.x; i < nh * D; i += blockDim.x) {
    const int h = i / D, d = i - h * D;
    float M = PGN_NEG_INF;
#pragma unroll
    for (int w = 0; w < NW; w++) M = fmaxf(M, sm[w][h]);
    const float mUse = M == PGN_NEG_INF ? 0.f : M;
    float L = 0.f, A = 0.f;
#pragma unroll
    for (int w = 0; w < NW; w++) {
      const float f = exp2f(sm[w][h] - mUse);
      L += sl[w][h] * f;
      A += so[(w * R + h) * D + d] * f;
    }
    A *= vScale;
    const int head = h0 + h;
    if (numSplits == 1) {
      out[((long long)qRow * numHeads + head) * D + d] = from_f32<T>(L > 0.f ? A / L : 0.f);
    } else {
      const long long idx = ((long long)seq * numHeads + head) * numSplits + split;
      partialO[idx * D + d] = A;
      if (d == 0) { partialML[2 * idx] = M; partialML[2 * idx + 1] = L; }
    }
  }
}
