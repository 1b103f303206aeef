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
// Where D and rotaryDim are multiples of 8 and the rows 16-byte aligned, a lane rotates 4 pairs and copies 8
// elements at a time (vector loads and stores, the same arithmetic element by element); else one element.
#include "kv_fp8.cuh"

template <typename X, int E> struct alignas(sizeof(X) * E) RopeVec { X v[E]; };
template <typename X, int E> __device__ __forceinline__ RopeVec<X, E> rope_load(const X* p) {
  return *reinterpret_cast<const RopeVec<X, E>*>(p);
}
template <typename X, int E> __device__ __forceinline__ void rope_store(X* p, const RopeVec<X, E>& v) {
  *reinterpret_cast<RopeVec<X, E>*>(p) = v;
}

// dst = rotate(src) over the rotary dims, 4 pairs a lane; conv(x) is the stored element (T, or a cache code).
// NeoX pairs j..j+3 are dims j.. and j + half..; GPT-J's are the 8 dims 2j .. 2j + 7.
template <typename T, typename C, typename Conv>
__device__ __forceinline__ void rope_rotate_vec(const T* src, C* dst, const float* cs, int half, int gptj, int lane, Conv conv) {
  for (int j = lane * 4; j < half; j += 128) {
    const RopeVec<float, 4> c = rope_load<float, 4>(cs + j), s = rope_load<float, 4>(cs + half + j);
    float x1[4], x2[4];
    if (gptj) {
      const RopeVec<T, 8> a = rope_load<T, 8>(src + 2 * j);
#pragma unroll
      for (int e = 0; e < 4; e++) { x1[e] = to_f32(a.v[2 * e]); x2[e] = to_f32(a.v[2 * e + 1]); }
    } else {
      const RopeVec<T, 4> a = rope_load<T, 4>(src + j), b = rope_load<T, 4>(src + j + half);
#pragma unroll
      for (int e = 0; e < 4; e++) { x1[e] = to_f32(a.v[e]); x2[e] = to_f32(b.v[e]); }
    }
    if (gptj) {
      RopeVec<C, 8> o;
#pragma unroll
      for (int e = 0; e < 4; e++) {
        o.v[2 * e] = conv(x1[e] * c.v[e] - x2[e] * s.v[e]);
        o.v[2 * e + 1] = conv(x2[e] * c.v[e] + x1[e] * s.v[e]);
      }
      rope_store<C, 8>(dst + 2 * j, o);
    } else {
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
}

// dst[d] = conv(src[d]) for d in [d0, D), 8 elements a lane.
template <typename T, typename C, typename Conv>
__device__ __forceinline__ void rope_copy_vec(const T* src, C* dst, int d0, int D, int lane, Conv conv) {
  for (int d = d0 + lane * 8; d < D; d += 256) {
    const RopeVec<T, 8> a = rope_load<T, 8>(src + d);
    RopeVec<C, 8> o;
#pragma unroll
    for (int e = 0; e < 8; e++) o.v[e] = conv(to_f32(a.v[e]));
    rope_store<C, 8>(dst + d, o);
  }
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
  const float* cs = nullptr;
  if (cosSin) {
    int p = positions[t];
    p = p < 0 ? 0 : (p >= numPositions ? numPositions - 1 : p);
    cs = cosSin + (long long)p * rotaryDim;
  }
  const bool vec = D % 8 == 0 && rotaryDim % 8 == 0 &&
                   ((reinterpret_cast<size_t>(qkv) | reinterpret_cast<size_t>(kCache) | reinterpret_cast<size_t>(vCache) |
                     reinterpret_cast<size_t>(cosSin)) & 15) == 0;
  if (head < numHeads) {
    if (!cs) return;
    T* q = row + head * D;
    if (vec) {
      rope_rotate_vec<T, T>(q, q, cs, half, gptj, lane, [](float x) { return from_f32<T>(x); });
      return;
    }
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
  if (vec) {
    const auto toV = [vScale](float x) { return kv_from_f32<C>(x, vScale); };
    const auto toK = [kScale](float x) { return kv_from_f32<C>(x, kScale); };
    rope_copy_vec<T, C>(v, vDst, 0, D, lane, toV);
    rope_copy_vec<T, C>(src, dst, cs ? rotaryDim : 0, D, lane, toK);
    if (cs) rope_rotate_vec<T, C>(src, dst, cs, half, gptj, lane, toK);
    return;
  }
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
