// Paged attention for prefill and chunked prefill: FlashAttention-2-style tiles on tensor
// cores (mma.sync m16n8k16, f32 accumulators) with online softmax, reading every key and
// value from the paged cache, so earlier chunks and reused prefix blocks are seen alike.
//
// Grid (ceil(maxSeqlenQ / BM), numHeads, numSeqs), NW warps of 16 query rows (BM = 16 NW):
// 4 warps for short prompts (more blocks), 8 for long ones (K/V tiles shared by more rows).
// Seq s owns query rows cuSeqlensQ[s] .. cuSeqlensQ[s+1] (qLen) and has kvLen = contextLens[s]
// keys; query i sits at position kvLen - qLen + i and sees keys 0..pos (causal), or
// pos - window + 1 .. pos. Score = q.k * scale, then softcap * tanh(score / softcap), then
// + slope[h] * (j - pos) (ALiBi); softmax in the log2 domain.
// Shared memory (dynamic): Q [BM][D+8], K [BN][D+8], V [BN][D+8] of T; the 16-byte row
// pad keeps ldmatrix free of bank conflicts. Keep BN in step with cuda-attention.ts.
// An fp8 cache (C = kv_fp8_t): K and V tiles arrive by cp.async in byte staging buffers
// (2 BN D bytes after V) and are converted to T in shared memory before their MMAs (exact);
// kScale is folded into the score scale and vScale into the output.
#include "mma.cuh"
#include "kv_fp8.cuh"

#define PGN_PREFILL_BN(D) ((D) <= 128 ? 64 : 32)
// Blocks an SM must hold (caps registers): 16 warps (128 registers) where the accumulators fit
// without spilling; 12 or 16 warps for head size 128 (4 warps: ~160 registers, no spill;
// 8 warps: 128 registers, a small spill); head size 256 needs ~250 registers.
#define PGN_PREFILL_MIN_BLOCKS(D, NW) ((D) <= 96 ? 16 / (NW) : (D) == 128 ? ((NW) == 4 ? 3 : 2) : 1)

template <typename T, typename C, int D, int BN, int NW>
__device__ void attn_prefill(T* out, const T* qkv, const C* kCache, const C* vCache, const int* cuSeqlensQ,
                             const int* contextLens, const int* blockTables, const float* alibiSlopes, int numHeads,
                             int numKvHeads, int maxBlocksPerSeq, int blockSize, float scale, int window, float softcap,
                             float kScale, float vScale) {
  constexpr bool F8 = sizeof(C) == 1;
  constexpr int BM = 16 * NW, STRIDE = D + 8, CHUNKS = D / 8, THREADS = 32 * NW;
  extern __shared__ __align__(16) unsigned char smemRaw[];
  T* sQ = reinterpret_cast<T*>(smemRaw);
  T* sK = sQ + BM * STRIDE;
  T* sV = sK + BN * STRIDE;
  kv_fp8_t* stK = reinterpret_cast<kv_fp8_t*>(sV + BN * STRIDE);  // fp8 staging [K | V][BN][D]
  kv_fp8_t* stV = stK + BN * D;

  // the last query tiles see the most keys: start them first
  const int seq = blockIdx.z, head = blockIdx.y, m0 = (gridDim.x - 1 - blockIdx.x) * BM;
  const int q0 = cuSeqlensQ[seq], qLen = cuSeqlensQ[seq + 1] - q0;
  if (m0 >= qLen) return;
  const int kvLen = contextLens[seq];
  const int kvHead = head / (numHeads / numKvHeads);
  const int qStride = (numHeads + 2 * numKvHeads) * D, kvStride = numKvHeads * D, outStride = numHeads * D;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int* table = blockTables + (long long)seq * maxBlocksPerSeq;
  const int firstPos = kvLen - qLen;  // position of query 0

  // keys this tile can see: [jBegin, jEnd)
  const int jEnd = firstPos + min(m0 + BM, qLen);
  const int jBegin = window > 0 ? max(0, firstPos + m0 - window + 1) : 0;
  const int nBegin = jBegin / BN * BN;

  for (int i = tid; i < BM * CHUNKS; i += THREADS) {
    const int r = i / CHUNKS, c = (i - r * CHUNKS) * 8;
    const bool valid = m0 + r < qLen;
    cp_async16(sQ + r * STRIDE + c, qkv + (long long)(q0 + (valid ? m0 + r : 0)) * qStride + head * D + c, valid);
  }
  // a K or V tile: straight into its T tile, or (fp8) into its staging buffer
  auto loadKv = [&](T* dst, kv_fp8_t* stage, const C* cache, int n0) {
    for (int i = tid; i < BN * CHUNKS; i += THREADS) {
      const int r = i / CHUNKS, c = (i - r * CHUNKS) * 8;
      const int j = n0 + r;
      const bool valid = j < jEnd;
      long long slot = 0;
      if (valid) slot = (long long)table[j / blockSize] * blockSize + j % blockSize;
      if constexpr (F8) kv_cp_async8(stage + r * D + c, cache + slot * kvStride + kvHead * D + c, valid);
      else cp_async16(dst + r * STRIDE + c, cache + slot * kvStride + kvHead * D + c, valid);
    }
  };
  // fp8: staging bytes -> the T tile (then a barrier before the tile's MMAs)
  auto convertKv = [&](T* dst, const kv_fp8_t* stage) {
    for (int i = tid; i < BN * CHUNKS; i += THREADS) {
      const int r = i / CHUNKS, c = (i - r * CHUNKS) * 8;
      *reinterpret_cast<uint4*>(dst + r * STRIDE + c) = kv_fp8x8_to_pack<T>(*reinterpret_cast<const uint2*>(stage + r * D + c));
    }
    __syncthreads();
  };
  loadKv(sK, stK, kCache, nBegin);
  cp_async_commit();  // group: Q + first K

  const int row0 = m0 + warp * 16 + (lane >> 2);  // query index of c0,c1; c2,c3 are row0 + 8
  const int pos0 = firstPos + row0, pos1 = pos0 + 8;
  const bool valid0 = row0 < qLen, valid1 = row0 + 8 < qLen;
  const bool plain = softcap == 0.f && alibiSlopes == nullptr;
  const float qkScale = (plain ? scale * PGN_LOG2E : scale) * kScale;
  const float slope = alibiSlopes ? alibiSlopes[head] : 0.f;
  // masks are needed on tiles that reach past the first query's position, on window
  // tiles and where some query rows of the tile are padding
  const int minPos = firstPos + m0;
  const bool ragged = m0 + BM > qLen || window > 0;

  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float mRow[2] = {PGN_NEG_INF, PGN_NEG_INF}, lRow[2] = {0.f, 0.f};

  for (int n0 = nBegin; n0 < jEnd; n0 += BN) {
    loadKv(sV, stV, vCache, n0);
    cp_async_commit();
    cp_async_wait<1>();  // Q and this K
    __syncthreads();
    if constexpr (F8) convertKv(sK, stK);

    float s[BN / 8][4];
#pragma unroll
    for (int i = 0; i < BN / 8; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      unsigned a[4];
      ldmatrix_x4(a, sQ + (warp * 16 + (lane & 15)) * STRIDE + kk * 16 + (lane >> 4) * 8);
#pragma unroll
      for (int nt = 0; nt < BN / 16; nt++) {
        unsigned b[4];
        ldmatrix_x4(b, sK + (nt * 16 + (lane & 7) + ((lane >> 4) << 3)) * STRIDE + kk * 16 + ((lane >> 3) & 1) * 8);
        mma16816<T>(s[2 * nt], a, b[0], b[1]);
        mma16816<T>(s[2 * nt + 1], a, b[2], b[3]);
      }
    }

    const bool mask = ragged || n0 < jBegin || n0 + BN - 1 > minPos;
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int j = n0 + nt * 8 + 2 * (lane & 3) + (e & 1);
        const int pos = e < 2 ? pos0 : pos1;
        float x = s[nt][e] * qkScale;
        if (!plain) {
          if (softcap > 0.f) x = softcap * tanhf(x / softcap);
          x = (x + slope * (float)(j - pos)) * PGN_LOG2E;
        }
        if (mask && (!(e < 2 ? valid0 : valid1) || j > pos || (window > 0 && j <= pos - window))) x = PGN_NEG_INF;
        s[nt][e] = x;
      }
    }

    // online softmax over rows g (r = 0) and g + 8 (r = 1); a row is spread over 4 lanes
    float mx[2] = {mRow[0], mRow[1]};
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt++) {
      mx[0] = fmaxf(mx[0], fmaxf(s[nt][0], s[nt][1]));
      mx[1] = fmaxf(mx[1], fmaxf(s[nt][2], s[nt][3]));
    }
    float mUse[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      mUse[r] = mx[r] == PGN_NEG_INF ? 0.f : mx[r];
      const float alpha = fast_exp2(mRow[r] - mUse[r]);
      mRow[r] = mx[r];
      lRow[r] *= alpha;
#pragma unroll
      for (int i = 0; i < D / 8; i++) { o[i][2 * r] *= alpha; o[i][2 * r + 1] *= alpha; }
    }
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const float p = fast_exp2(s[nt][e] - mUse[e >> 1]);
        s[nt][e] = p;
        lRow[e >> 1] += p;
      }
    }

    cp_async_wait<0>();  // this V
    __syncthreads();     // every warp is done with K
    if (n0 + BN < jEnd) {
      loadKv(sK, stK, kCache, n0 + BN);
      cp_async_commit();
    }
    if constexpr (F8) convertKv(sV, stV);
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
      const unsigned a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                             pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dt = 0; dt < D / 16; dt++) {
        unsigned b[4];
        ldmatrix_x4_trans(b, sV + (kk * 16 + (lane & 15)) * STRIDE + dt * 16 + (lane >> 4) * 8);
        mma16816<T>(o[2 * dt], a, b[0], b[1]);
        mma16816<T>(o[2 * dt + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // every warp is done with V
  }

  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; r++) {
    lRow[r] += __shfl_xor_sync(0xffffffffu, lRow[r], 1);
    lRow[r] += __shfl_xor_sync(0xffffffffu, lRow[r], 2);
    inv[r] = lRow[r] > 0.f ? vScale / lRow[r] : 0.f;
  }
  T* out0 = out + (long long)(q0 + row0) * outStride + head * D + 2 * (lane & 3);
#pragma unroll
  for (int i = 0; i < D / 8; i++) {
    if (valid0) *reinterpret_cast<unsigned*>(out0 + i * 8) = pack2<T>(o[i][0] * inv[0], o[i][1] * inv[0]);
    if (valid1) *reinterpret_cast<unsigned*>(out0 + 8 * outStride + i * 8) = pack2<T>(o[i][2] * inv[1], o[i][3] * inv[1]);
  }
}

#define PGN_PREFILL_W(T, S, D, NW)                                                                                \
  extern "C" __global__ void __launch_bounds__(32 * NW, PGN_PREFILL_MIN_BLOCKS(D, NW))                           \
      attn_prefill_##S##_d##D##_w##NW(T* out, const T* qkv, const T* kCache, const T* vCache,              \
           const int* cuSeqlensQ, const int* contextLens, const int* blockTables, const float* alibiSlopes,      \
           int numHeads, int numKvHeads, int maxBlocksPerSeq, int blockSize, float scale, int window,            \
           float softcap) {                                                                                      \
    PGN_PDL_WAIT();                                                                                              \
    attn_prefill<T, T, D, PGN_PREFILL_BN(D), NW>(out, qkv, kCache, vCache, cuSeqlensQ, contextLens,          \
                                                     blockTables, alibiSlopes, numHeads, numKvHeads,             \
                                                     maxBlocksPerSeq, blockSize, scale, window, softcap, 1.f, 1.f); \
    PGN_PDL_TRIGGER();                                                                                           \
  }                                                                                                              \
  extern "C" __global__ void __launch_bounds__(32 * NW, PGN_PREFILL_MIN_BLOCKS(D, NW))                           \
      attn_prefill_fp8_##S##_d##D##_w##NW(T* out, const T* qkv, const kv_fp8_t* kCache,                    \
                 const kv_fp8_t* vCache, const int* cuSeqlensQ, const int* contextLens, const int* blockTables,  \
                 const float* alibiSlopes, int numHeads, int numKvHeads, int maxBlocksPerSeq, int blockSize,     \
                 float scale, int window, float softcap, float kScale, float vScale) {                           \
    PGN_PDL_WAIT();                                                                                              \
    attn_prefill<T, kv_fp8_t, D, PGN_PREFILL_BN(D), NW>(out, qkv, kCache, vCache, cuSeqlensQ, contextLens,   \
                                                            blockTables, alibiSlopes, numHeads, numKvHeads,      \
                                                            maxBlocksPerSeq, blockSize, scale, window, softcap,  \
                                                            kScale, vScale);                                     \
    PGN_PDL_TRIGGER();                                                                                           \
  }
#define PGN_PREFILL_NW(T, S, D) PGN_PREFILL_W(T, S, D, 4) PGN_PREFILL_W(T, S, D, 8)
#define PGN_PREFILL_ALL_D(T, S)                                                                                  \
  PGN_PREFILL_NW(T, S, 64) PGN_PREFILL_NW(T, S, 80) PGN_PREFILL_NW(T, S, 96) PGN_PREFILL_NW(T, S, 128)          \
  PGN_PREFILL_NW(T, S, 256)

PGN_HALF_TYPES(PGN_PREFILL_ALL_D)
