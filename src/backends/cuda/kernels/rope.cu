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
// rope_write_kv_vec (D and rotaryDim multiples of 8, 16-byte aligned rows): the same arithmetic, one thread per
// item of a token's row (4 pairs to rotate or 8 elements to copy), so that all of a row's loads are in flight at
// once. The warp-per-head kernel above was latency-bound: 18 us a layer at 1024 tokens, 32% of copy bandwidth.
#include "kv_fp8.cuh"

// Token t's row of the cos / sin table (its position clamped into the table), or null without rotation.
__device__ __forceinline__ const float* rope_cos_sin(const int* positions, const float* cosSin, long long t, int rotaryDim,
                                                     int numPositions) {
  if (!cosSin) return nullptr;
  int p = positions[t];
  p = p < 0 ? 0 : (p >= numPositions ? numPositions - 1 : p);
  return cosSin + (long long)p * rotaryDim;
}

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
  const float* cs = rope_cos_sin(positions, cosSin, t, rotaryDim, numPositions);
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

template <typename X, int E> struct alignas(sizeof(X) * E) RopeVec { X v[E]; };
template <typename X, int E> __device__ __forceinline__ RopeVec<X, E> rope_load(const X* p) {
  return *reinterpret_cast<const RopeVec<X, E>*>(p);
}
template <typename X, int E> __device__ __forceinline__ void rope_store(X* p, const RopeVec<X, E>& v) {
  *reinterpret_cast<RopeVec<X, E>*>(p) = v;
}

// dst = rotate(src) for pairs j .. j + 3; conv(x) is the stored element (T, or a cache code). NeoX pairs are dims
// j.. and j + half..; GPT-J's the 8 dims 2j .. 2j + 7.
template <typename T, typename C, typename Conv>
__device__ __forceinline__ void rope_rotate4(const T* src, C* dst, const float* cs, int half, int gptj, int j, Conv conv) {
  const RopeVec<float, 4> c = rope_load<float, 4>(cs + j), s = rope_load<float, 4>(cs + half + j);
  float x1[4], x2[4];
  if (gptj) {
    const RopeVec<T, 8> a = rope_load<T, 8>(src + 2 * j);
#pragma unroll
    for (int e = 0; e < 4; e++) { x1[e] = to_f32(a.v[2 * e]); x2[e] = to_f32(a.v[2 * e + 1]); }
    RopeVec<C, 8> o;
#pragma unroll
    for (int e = 0; e < 4; e++) {
      o.v[2 * e] = conv(x1[e] * c.v[e] - x2[e] * s.v[e]);
      o.v[2 * e + 1] = conv(x2[e] * c.v[e] + x1[e] * s.v[e]);
    }
    rope_store<C, 8>(dst + 2 * j, o);
  } else {
    const RopeVec<T, 4> a = rope_load<T, 4>(src + j), b = rope_load<T, 4>(src + j + half);
#pragma unroll
    for (int e = 0; e < 4; e++) { x1[e] = to_f32(a.v[e]); x2[e] = to_f32(b.v[e]); }
    RopeVec<C, 4> o1, o2;
#pragma unroll
    for (int e = 0; e < 4; e++) {
      o1.v[e] = conv(x1[e] * c.v[e] - x2[e] * s.v[e]);
      o2.v[e] = conv(x2[e] * c.v[e] + x1[e] * s.v[e]);
    }
    rope_store<C, 4>(dst + j, o1);
    rope_store<C, 4>(dst + j + half, o2);
  }
}

// dst[d .. d + 7] = conv(src[d .. d + 7])
template <typename T, typename C, typename Conv>
__device__ __forceinline__ void rope_copy8(const T* src, C* dst, int d, Conv conv) {
  const RopeVec<T, 8> a = rope_load<T, 8>(src + d);
  RopeVec<C, 8> o;
#pragma unroll
  for (int e = 0; e < 8; e++) o.v[e] = conv(to_f32(a.v[e]));
  rope_store<C, 8>(dst + d, o);
}

// Grid (numTokens, ceil(items / blockDim)). A token's items, in order: q heads x R (R = rotaryDim / 8 groups of
// 4 pairs; none without cosSin), k heads x (R + P) (P = the 8-element packs past the rotary dims), v heads x D / 8.
template <typename T, typename C>
__device__ void rope_write_kv_vec(T* qkv, const int* positions, const float* cosSin, C* kCache, C* vCache, const int* slotMapping,
                                  int numHeads, int numKvHeads, int D, int rotaryDim, int gptj, int numPositions, int numSlots,
                                  float kScale, float vScale) {
  const long long t = blockIdx.x;
  const int R = cosSin ? rotaryDim / 8 : 0, P = (D - (cosSin ? rotaryDim : 0)) / 8;
  const int qItems = numHeads * R, kItems = numKvHeads * (R + P), vItems = numKvHeads * (D / 8);
  int item = blockIdx.y * blockDim.x + threadIdx.x;
  if (item >= qItems + kItems + vItems) return;
  T* row = qkv + t * (long long)((numHeads + 2 * numKvHeads) * D);
  const int half = rotaryDim / 2;
  const float* cs = rope_cos_sin(positions, cosSin, t, rotaryDim, numPositions);
  if (item < qItems) {
    const int head = item / R;
    T* q = row + head * D;
    rope_rotate4<T, T>(q, q, cs, half, gptj, (item - head * R) * 4, [](float x) { return from_f32<T>(x); });
    return;
  }
  const int slot = slotMapping[t];
  if (slot < 0 || slot >= numSlots) return;
  const int kvWidth = numKvHeads * D;
  item -= qItems;
  if (item < kItems) {
    const int kvHead = item / (R + P), u = item - kvHead * (R + P);
    const T* src = row + numHeads * D + kvHead * D;
    C* dst = kCache + (long long)slot * kvWidth + kvHead * D;
    const auto toK = [kScale](float x) { return kv_from_f32<C>(x, kScale); };
    if (u < R) rope_rotate4<T, C>(src, dst, cs, half, gptj, u * 4, toK);
    else rope_copy8<T, C>(src, dst, (cosSin ? rotaryDim : 0) + 8 * (u - R), toK);
    return;
  }
  item -= kItems;
  const int kvHead = item / (D / 8);
  rope_copy8<T, C>(row + numHeads * D + kvWidth + kvHead * D, vCache + (long long)slot * kvWidth + kvHead * D,
                   (item - kvHead * (D / 8)) * 8, [vScale](float x) { return kv_from_f32<C>(x, vScale); });
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
  }                                                                                                             \
  extern "C" __global__ void rope_write_kv_vec_##S(T* qkv, const int* positions, const float* cosSin, T* kCache, \
                                                   T* vCache, const int* slotMapping, int numHeads,             \
                                                   int numKvHeads, int D, int rotaryDim, int gptj,              \
                                                   int numPositions, int numSlots) {                            \
    PGN_PDL_WAIT();                                                                                              \
    rope_write_kv_vec<T, T>(qkv, positions, cosSin, kCache, vCache, slotMapping, numHeads, numKvHeads, D,        \
                            rotaryDim, gptj, numPositions, numSlots, 1.f, 1.f);                                 \
    PGN_PDL_TRIGGER();                                                                                           \
  }                                                                                                             \
  extern "C" __global__ void rope_write_kv_vec_fp8_##S(T* qkv, const int* positions, const float* cosSin,      \
                                                       kv_fp8_t* kCache, kv_fp8_t* vCache, const int* slotMapping, \
                                                       int numHeads, int numKvHeads, int D, int rotaryDim,      \
                                                       int gptj, int numPositions, int numSlots, float kScale,  \
                                                       float vScale) {                                          \
    PGN_PDL_WAIT();                                                                                              \
    rope_write_kv_vec<T, kv_fp8_t>(qkv, positions, cosSin, kCache, vCache, slotMapping, numHeads, numKvHeads, D, \
                                   rotaryDim, gptj, numPositions, numSlots, kScale, vScale);                    \
    PGN_PDL_TRIGGER();                                                                                           \
  }

PGN_FLOAT_TYPES(PGN_ROPE)
