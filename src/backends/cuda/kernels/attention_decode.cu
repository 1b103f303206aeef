// Paged attention for decode (one query per sequence), split along the keys
// (flash-decoding) so that long contexts fill the GPU even at batch 1.
//
// Grid (numSplits, numKvHeads * headGroups, numSeqs), 128 threads. A block serves up to HPB
// query heads that share one KV head (GQA/MQA), so each K/V row is read once for all of them.
// A key is handled by LPK lanes, each holding one 16-byte chunk of the row (8 elements);
// every key group keeps its own online softmax, merged across the block at the end.
// Sequence s's keys [kvBegin, kvLen) (kvBegin > 0 with a sliding window) are cut into
// numSplits equal ranges; numSplits is fixed by the launch (so a captured graph replays
// for any context length) and ranges are computed from each sequence's own length.
// numSplits == 1 writes `out` directly; otherwise each split writes its unnormalised
// accumulator to partialO [numSeqs, numHeads, numSplits, D] and (max, sum) in the log2
// domain to partialML [.., 2], and attn_decode_combine finishes. Combining in this kernel
// instead (the last split of a (seq, head group) to count in an atomic does it, the counter
// reset for the next replay) was measured 2026-11-28 (H100, 8B shape, batch 1, 8 splits): 7.87
// us a layer against 7.86 with the second launch, and the unsplit path 2-7% slower (the extra
// shared memory and epilogue): not kept.
// An fp8 cache (C = kv_fp8_t, kv_fp8.cuh) is read 8 bytes a lane, with more keys in flight
// (DecodeKv) to keep as many bytes loading; kScale is folded into the query and vScale into the
// output, so the codes convert exactly. Measured 2026-11-28 (H100, Llama-3.1-8B shape, batch 256,
// context ~1000): 19.4 ms/step against 21.7 for bf16 (with bf16's keys in flight: 20.3); still ~57%
// of copy bandwidth.
// 16-byte loads (16 codes a lane, LPK halved) were tried the same day: with 4 heads a block the 64
// accumulators need > 128 registers (spills even at 1 key in flight), so 3 blocks an SM and 3 keys
// in flight: 23.9 ms/step against 19.5 (batch 256, context ~1000): not kept.
#include "kv_fp8.cuh"
#include "decode_common.cuh"

#define PGN_DECODE_WARPS 4
#define PGN_DECODE_UNROLL 4
// blocks an SM holds (register cap; ptxas needs no more than this anyway); keep in step with
// decodeBlocksPerSm in cuda-attention.ts. Register double-buffering of the next keys' K/V was
// tried (2026-11-27, H100): it needed ~165 registers (3 blocks an SM) and ran 10-40% slower.
#define PGN_DECODE_MIN_BLOCKS(HPB) ((HPB) <= 4 ? 4 : 3)

// How attn_decode reads a cache of element type C: a lane's 8 elements of a K or V row in one load
// (Raw) and their conversion to f32 (fp8 codes unscaled); keysInFlight(HPB), the keys a lane loads
// before the math (fp8: more, as many as fit in registers unspilled, so as many bytes load);
// CONVERT_ONCE, whether each V row is converted once for all heads (fp8) or head by head (16-bit
// rows, whose conversion is a shift). All compile-time: nothing of it is left in the KV loop.
template <typename T, typename C> struct DecodeKv {
  static_assert(sizeof(C) == 2, "16-bit cache rows (the fp8 cache has its own DecodeKv)");
  using Raw = uint4;
  static constexpr bool CONVERT_ONCE = false;
  __host__ __device__ static constexpr int keysInFlight(int hpb) { return hpb >= 8 ? 2 : PGN_DECODE_UNROLL; }
  static __device__ __forceinline__ Raw zero() { return make_uint4(0, 0, 0, 0); }
  static __device__ __forceinline__ void to_f32x8(const Raw& raw, float* f) {
    const T* x = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int e = 0; e < 8; e++) f[e] = to_f32(x[e]);
  }
};
template <typename T> struct DecodeKv<T, kv_fp8_t> {
  using Raw = uint2;
  static constexpr bool CONVERT_ONCE = true;
  __host__ __device__ static constexpr int keysInFlight(int hpb) { return hpb >= 8 ? 2 : (hpb >= 4 ? 6 : 2 * PGN_DECODE_UNROLL); }
  static __device__ __forceinline__ Raw zero() { return make_uint2(0, 0); }
  static __device__ __forceinline__ void to_f32x8(const Raw& raw, float* f) { kv_fp8x8_to_f32(raw, f); }
};

// One key's weight p into a head's softmax sum and accumulator (v: the key's 8 values, T or converted).
template <typename V> __device__ __forceinline__ void decode_accumulate(float& l, float* acc, float p, const V* v) {
  l += p;
#pragma unroll
  for (int e = 0; e < 8; e++) acc[e] += p * to_f32(v[e]);
}

template <typename T, typename C, int D, int HPB>
__device__ void attn_decode(PGN_DECODE_PARAMS(T, C), float kScale, float vScale) {
  using KV = DecodeKv<T, C>;
  constexpr int CHUNKS = D / 8;
  constexpr int LPK = CHUNKS <= 8 ? 8 : (CHUNKS <= 16 ? 16 : 32);  // lanes per key
  constexpr int KPW = 32 / LPK;                                    // keys per warp
  constexpr int NW = PGN_DECODE_WARPS, SLOTS = NW * KPW, UK = KV::keysInFlight(HPB);
  __shared__ __align__(16) float sq[HPB][D];
  __shared__ float sm[NW][HPB], sl[NW][HPB];
  __shared__ __align__(16) float so[NW][HPB][D];

  const int seq = blockIdx.z, split = blockIdx.x;
  const int group = numHeads / numKvHeads, headGroups = (group + HPB - 1) / HPB;
  const int kvHead = blockIdx.y / headGroups;
  const int h0 = kvHead * group + (blockIdx.y - kvHead * headGroups) * HPB;
  const int nh = min(HPB, (kvHead + 1) * group - h0);
  const DecodeKeys keys = decode_split_keys(cuSeqlensQ, contextLens, seq, split, numSplits, window);
  const int qRow = keys.qRow, pos = keys.pos, jBegin = keys.jBegin, jEnd = keys.jEnd;
  const int qStride = (numHeads + 2 * numKvHeads) * D, kvStride = numKvHeads * D;
  const int* table = blockTables + (long long)seq * maxBlocksPerSeq;
  const bool plain = softcap == 0.f && alibiSlopes == nullptr;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  {
    const float qScale = (plain ? scale * PGN_LOG2E : scale) * kScale;
    const T* q = qkv + (long long)qRow * qStride + h0 * D;
    for (int i = tid; i < HPB * D; i += blockDim.x) sq[i / D][i % D] = i < nh * D ? to_f32(q[i]) * qScale : 0.f;
  }
  float slope[HPB];
#pragma unroll
  for (int h = 0; h < HPB; h++) slope[h] = alibiSlopes && h < nh ? alibiSlopes[h0 + h] : 0.f;
  __syncthreads();

  const int slot = warp * KPW + lane / LPK;
  const int li = lane % LPK;
  const bool active = li < CHUNKS;  // D = 80, 96 leave some lanes idle
  const int c = active ? li * 8 : 0;
  const long long colOffset = (long long)kvHead * D + c;

  float m[HPB], l[HPB], acc[HPB][8];
#pragma unroll
  for (int h = 0; h < HPB; h++) {
    m[h] = PGN_NEG_INF;
    l[h] = 0.f;
#pragma unroll
    for (int e = 0; e < 8; e++) acc[h][e] = 0.f;
  }

  for (int base = jBegin; base < jEnd; base += SLOTS * UK) {
    typename KV::Raw kr[UK], vr[UK];
#pragma unroll
    for (int u = 0; u < UK; u++) {
      const int j = base + u * SLOTS + slot;
      kr[u] = vr[u] = KV::zero();
      if (j < jEnd && active) {
        const long long row = (long long)table[j / blockSize] * blockSize + j % blockSize;
        kr[u] = *reinterpret_cast<const typename KV::Raw*>(kCache + row * kvStride + colOffset);
        vr[u] = *reinterpret_cast<const typename KV::Raw*>(vCache + row * kvStride + colOffset);
      }
    }
    // scores of the UK keys for every head (independent, so the reductions overlap)
    float s[UK][HPB];
#pragma unroll
    for (int u = 0; u < UK; u++) {
      float kf[8];
      KV::to_f32x8(kr[u], kf);
#pragma unroll
      for (int h = 0; h < HPB; h++) {
        const float4 qa = *reinterpret_cast<const float4*>(&sq[h][c]);
        const float4 qb = *reinterpret_cast<const float4*>(&sq[h][c + 4]);
        s[u][h] = qa.x * kf[0] + qa.y * kf[1] + qa.z * kf[2] + qa.w * kf[3] + qb.x * kf[4] + qb.y * kf[5] + qb.z * kf[6] + qb.w * kf[7];
      }
    }
#pragma unroll
    for (int o = 1; o < LPK; o <<= 1) {
#pragma unroll
      for (int u = 0; u < UK; u++) {
#pragma unroll
        for (int h = 0; h < HPB; h++) s[u][h] += __shfl_xor_sync(0xffffffffu, s[u][h], o);
      }
    }
#pragma unroll
    for (int u = 0; u < UK; u++) {
      const int j = base + u * SLOTS + slot;
#pragma unroll
      for (int h = 0; h < HPB; h++) {
        float x = s[u][h];
        if (!plain) {
          if (softcap > 0.f) x = softcap * tanhf(x / softcap);
          x = (x + slope[h] * (float)(j - pos)) * PGN_LOG2E;
        }
        s[u][h] = j < jEnd ? x : PGN_NEG_INF;
      }
    }
    // one online-softmax step for the UK keys: each head's rescale, then its values head by head, or
    // (CONVERT_ONCE) every head's rescale, then the values key by key
    float mUse[HPB];
#pragma unroll
    for (int h = 0; h < HPB; h++) {
      float mNew = m[h];
#pragma unroll
      for (int u = 0; u < UK; u++) mNew = fmaxf(mNew, s[u][h]);
      const float mu = mNew == PGN_NEG_INF ? 0.f : mNew;
      mUse[h] = mu;
      const float alpha = fast_exp2(m[h] - mu);
      m[h] = mNew;
      l[h] *= alpha;
#pragma unroll
      for (int e = 0; e < 8; e++) acc[h][e] *= alpha;
      if constexpr (!KV::CONVERT_ONCE) {
#pragma unroll
        for (int u = 0; u < UK; u++) decode_accumulate(l[h], acc[h], fast_exp2(s[u][h] - mu), reinterpret_cast<const T*>(&vr[u]));
      }
    }
    if constexpr (KV::CONVERT_ONCE) {
#pragma unroll
      for (int u = 0; u < UK; u++) {
        float vf[8];
        KV::to_f32x8(vr[u], vf);
#pragma unroll
        for (int h = 0; h < HPB; h++) decode_accumulate(l[h], acc[h], fast_exp2(s[u][h] - mUse[h]), vf);
      }
    }
  }

  PGN_PDL_TRIGGER();  // the KV loop is done: the next kernel may be scheduled

  // merge the key groups of a warp (lanes with the same chunk differ in bits >= log2(LPK))
#pragma unroll
  for (int o = LPK; o < 32; o <<= 1) {
#pragma unroll
    for (int h = 0; h < HPB; h++) {
      const float mO = __shfl_xor_sync(0xffffffffu, m[h], o), lO = __shfl_xor_sync(0xffffffffu, l[h], o);
      const float mNew = fmaxf(m[h], mO);
      const float mUse = mNew == PGN_NEG_INF ? 0.f : mNew;
      const float a = exp2f(m[h] - mUse), b = exp2f(mO - mUse);
      m[h] = mNew;
      l[h] = l[h] * a + lO * b;
#pragma unroll
      for (int e = 0; e < 8; e++) acc[h][e] = acc[h][e] * a + __shfl_xor_sync(0xffffffffu, acc[h][e], o) * b;
    }
  }
  if (lane < LPK && active) {
#pragma unroll
    for (int h = 0; h < HPB; h++) {
      if (lane == 0) { sm[warp][h] = m[h]; sl[warp][h] = l[h]; }
#pragma unroll
      for (int e = 0; e < 8; e++) so[warp][h][c + e] = acc[h][e];
    }
  }
  __syncthreads();

  decode_merge_warps<T, NW, HPB>(out, partialO, partialML, sm, sl, &so[0][0][0], nh, h0, D, numHeads, qRow, seq, split,
                                 numSplits, vScale);
}

// Grid (numHeads, numSeqs): out = sum_i 2^(m_i - M) acc_i / sum_i 2^(m_i - M) l_i.
// The split weights go to shared memory once; then a thread per d sums the splits.
#define PGN_DECODE_MAX_SPLITS 128
template <typename T>
__device__ void attn_decode_combine(T* out, const float* partialO, const float* partialML, const int* cuSeqlensQ,
                                    int numHeads, int D, int numSplits) {
  __shared__ float weight[PGN_DECODE_MAX_SPLITS];
  __shared__ float scratch[32];
  const int head = blockIdx.x, seq = blockIdx.y;
  const long long base = ((long long)seq * numHeads + head) * numSplits;
  const int i = threadIdx.x;
  const float mi = i < numSplits ? partialML[2 * (base + i)] : PGN_NEG_INF;
  float M = warp_max(mi);
  if ((i & 31) == 0) scratch[i >> 5] = M;
  __syncthreads();
  M = PGN_NEG_INF;
  for (int w = 0; w < (blockDim.x + 31) / 32; w++) M = fmaxf(M, scratch[w]);
  const float mUse = M == PGN_NEG_INF ? 0.f : M;
  const float wi = i < numSplits ? fast_exp2(mi - mUse) : 0.f;
  if (i < numSplits) weight[i] = wi;
  const float L = block_sum(i < numSplits ? partialML[2 * (base + i) + 1] * wi : 0.f, scratch);
  const float inv = L > 0.f ? 1.f / L : 0.f;
  T* o = out + ((long long)cuSeqlensQ[seq] * numHeads + head) * D;
  const float* p = partialO + base * D;
  for (int d = i; d < D; d += blockDim.x) {
    float A = 0.f;
#pragma unroll 8
    for (int k = 0; k < numSplits; k++) A += p[(long long)k * D + d] * weight[k];
    o[d] = from_f32<T>(A * inv);
  }
}

#define PGN_DECODE(T, S, D, HPB)                                                                                 \
  extern "C" __global__ void __launch_bounds__(128, PGN_DECODE_MIN_BLOCKS(HPB))                                   \
      attn_decode_##S##_d##D##_h##HPB(PGN_DECODE_PARAMS(T, T)) {                                                \
    PGN_PDL_WAIT();                                                                                              \
    attn_decode<T, T, D, HPB>(PGN_DECODE_ARGS, 1.f, 1.f);                                                        \
    PGN_PDL_TRIGGER();                                                                                           \
  }                                                                                                              \
  extern "C" __global__ void __launch_bounds__(128, PGN_DECODE_MIN_BLOCKS(HPB))                                   \
      attn_decode_fp8_##S##_d##D##_h##HPB(PGN_DECODE_PARAMS(T, kv_fp8_t), float kScale, float vScale) {          \
    PGN_PDL_WAIT();                                                                                              \
    attn_decode<T, kv_fp8_t, D, HPB>(PGN_DECODE_ARGS, kScale, vScale);                                           \
    PGN_PDL_TRIGGER();                                                                                           \
  }
#define PGN_DECODE_HPB(T, S, D) PGN_DECODE(T, S, D, 1) PGN_DECODE(T, S, D, 2) PGN_DECODE(T, S, D, 4) PGN_DECODE(T, S, D, 8)
#define PGN_DECODE_ALL(T, S)                                                                                     \
  PGN_DECODE_HPB(T, S, 64) PGN_DECODE_HPB(T, S, 80) PGN_DECODE_HPB(T, S, 96) PGN_DECODE_HPB(T, S, 128)          \
  PGN_DECODE_HPB(T, S, 256)                                                                                      \
  extern "C" __global__ void attn_decode_combine_##S(T* out, const float* partialO, const float* partialML,      \
                                                     const int* cuSeqlensQ, int numHeads, int D, int numSplits) { \
    PGN_PDL_WAIT();                                                                                              \
    attn_decode_combine<T>(out, partialO, partialML, cuSeqlensQ, numHeads, D, numSplits);                        \
    PGN_PDL_TRIGGER();                                                                                           \
  }

PGN_HALF_TYPES(PGN_DECODE_ALL)
