// ropeWriteKv: rotate q in place and write rotated k and v into the paged KV cache.
//
// qkv row: [q (numHeads * D) | k (numKvHeads * D) | v (numKvHeads * D)].
// cosSin row p (f32): [cos_0 .. cos_{r/2-1}, sin_0 .. sin_{r/2-1}], r = rotaryDim; null = no rotation.
// Pair j of a head rotates dims (j, j + r/2) for NeoX and (2j, 2j + 1) for GPT-J; dims >= r pass through.
// Cache row `slotMapping[t]` (< 0 or >= numSlots: skipped) of K and V, each [numSlots, numKvHeads * D].
// k and v inside qkv are left as they were.
// Grid (numTokens, ceil((numHeads + numKvHeads) / 4)), 4 warps: a warp per head; heads below
// numHeads are query heads (rotated in place), the rest KV heads (written to the cache).
// Cache elements C are T, or E4M3 codes of f32(x / kScale) and f32(x / vScale) (kv_fp8.cuh):
// the rotated k is quantized from f32, before any rounding to T.
#include "kv_fp8.cuh"

template <typename T, typename C>
__device__ void rope_write_kv(T* qkv, const int* positions, const float* cosSin, C* kCache, C* vCache, const int* slotMapping,
                              int numHeads, int numKvHeads, int D, int rotaryDim, int gptj, int numPositions, int numSlots,
                              float kScale, float vScale) {
  const long long t = blockIdx.x;
  const int head = blockIdx.y * 4 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (head >= numHeads + numKvHeads) return;
  const int qWidth = numHeads * D, kvWidth = numKvHeads * D;
  T* row = qkv + t * (long long)(qWidth + 2 * kvWidth);
  const int half = rotaryDim / 2;
  const float* cs = nullptr;
  if (cosSin) {
    int p = positions[t];
    p = p < 0 ? 0 : (p >= numPositions ? numPositions - 1 : p);
    cs = cosSin + (long long)p * rotaryDim;
  }
  if (head < numHeads) {
    if (!cs) return;
    T* q = row + head * D;
    for (int j = lane; j < half; j += 32) {
      const int i0 = gptj ? 2 * j : j, i1 = gptj ? 2 * j + 1 : j + half;
      const float x1 = to_f32(q[i0]), x2 = to_f32(q[i1]);
      const float c = cs[j], s = cs[half + j];
      q[i0] = from_f32<T>(x1 * c - x2 * s);
      q[i1] = from_f32<T>(x2 * c + x1 * s);
    }
    return;
  }
  const int slot = slotMapping[t];
  if (slot < 0 || slot >= numSlots) return;
  const int kvHead = head - numHeads;
  const T* src = row + qWidth + kvHead * D;
  C* dst = kCache + (long long)slot * kvWidth + kvHead * D;
  const T* v = row + qWidth + kvWidth + kvHead * D;
  C* vDst = vCache + (long long)slot * kvWidth + kvHead * D;
  for (int d = lane; d < D; d += 32) {
    vDst[d] = kv_from_f32<C>(to_f32(v[d]), vScale);
    if (!cs || d >= rotaryDim) dst[d] = kv_from_f32<C>(to_f32(src[d]), kScale);
  }
  if (!cs) return;
  for (int j = lane; j < half; j += 32) {
    const int i0 = gptj ? 2 * j : j, i1 = gptj ? 2 * j + 1 : j + half;
    const float x1 = to_f32(src[i0]), x2 = to_f32(src[i1]);
    const float c = cs[j], s = cs[half + j];
    dst[i0] = kv_from_f32<C>(x1 * c - x2 * s, kScale);
    dst[i1] = kv_from_f32<C>(x2 * c + x1 * s, kScale);
  }
}

#define PGN_ROPE(T, S)                                                                                          \
  extern "C" __global__ void rope_write_kv_##S(T* qkv, const int* positions, const float* cosSin, T* kCache,   \
                                               T* vCache, const int* slotMapping, int numHeads, int numKvHeads, \
                                               int D, int rotaryDim, int gptj, int numPositions, int numSlots) { \
    PGN_PDL_WAIT();                                                                                              \
    rope_write_kv<T, T>(qkv, positions, cosSin, kCache, vCache, slotMapping, numHeads, numKvHeads, D, rotaryDim, \
                        gptj, numPositions, numSlots, 1.f, 1.f);                                                \
    PGN_PDL_TRIGGER();                                                                                           \
  }                                                                                                             \
  extern "C" __global__ void rope_write_kv_fp8_##S(T* qkv, const int* positions, const float* cosSin,          \
                                                   kv_fp8_t* kCache, kv_fp8_t* vCache, const int* slotMapping,  \
                                                   int numHeads, int numKvHeads, int D, int rotaryDim, int gptj, \
                                                   int numPositions, int numSlots, float kScale, float vScale) { \
    PGN_PDL_WAIT();                                                                                              \
    rope_write_kv<T, kv_fp8_t>(qkv, positions, cosSin, kCache, vCache, slotMapping, numHeads, numKvHeads, D,     \
                               rotaryDim, gptj, numPositions, numSlots, kScale, vScale);                        \
    PGN_PDL_TRIGGER();                                                                                           \
  }

PGN_FLOAT_TYPES(PGN_ROPE)
