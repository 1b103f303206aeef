// Paged attention for decode on tensor cores, for grouped-query attention (GQA: 2..16 query heads a KV head).
// The products are taken transposed, keys as the MMA's rows and the group's query heads as its 8 (NB = 1) or 16
// (NB = 2) columns, so each K and V row is read once for the whole group, no MMA row is padding, and the
// accumulators are O^T: D / 16 tiles of 4 registers a head block.
//   S^T = K Q^T   (m16n8k16: A = 16 keys x 16 of d, B = Q^T, 16 of d x 8 heads)
//   O^T += V^T P^T (A = V^T, 16 of d x 16 keys; B = P^T, 16 keys x 8 heads, moved from S^T's accumulator
//                   layout with two movmatrix transposes)
// Online softmax in the log2 domain, a head per accumulator column.
//
// Grid (numSplits, numKvHeads, numSeqs), 4 warps. Each warp owns its own stream of 16-key tiles (tiles w, w + 4,
// ... of the split's keys) with a private 2-stage cp.async ring in shared memory (no block barrier in the key
// loop); its first tile is requested before Q is loaded (straight into registers); the warps' (max, sum,
// accumulator) are merged at the end (decode_merge_warps).
// Splits (flash-decoding) and their partialO / partialML layout are those of attn_decode (attention_decode.cu), so
// attn_decode_combine finishes a split launch.
//
// An fp8 cache (C = kv_fp8_t) stays bytes in the ring and is converted in registers (E4M3 -> f16, exact) into the
// MMAs' fragments, which are then f16 (Q converted, saturating at +-65504; P in [0, 1]); kScale is folded into the
// score scale and vScale into the output. So that each lane converts bytes it loads with wide shared-memory reads,
// the fp8 kernels permute d, which the products allow: in S^T's k step kk, lane quad t's fragment columns
// 2t, 2t + 1, 2t + 8, 2t + 9 are d = t D/4 + 4 kk + 0..3 (Q is loaded in the same order), and O^T's d block i row g
// (g + 8) is d = g D/8 + 2 i (+ 1), undone when the accumulators are written out.
// Shared memory (dynamic; keep in step with decodeTcSharedBytes in cuda-attention.ts): per warp 2 stages of K, V
// [16][RS] cache elements, RS = D + 16 bytes' worth; reused at the end for the warps' f32 accumulators [4][8 NB][D].
#include "mma.cuh"
#include "kv_fp8.cuh"
#include "decode_common.cuh"

#define PGN_DTC_WARPS 4
#define PGN_DTC_KEYS 16
#define PGN_DTC_STAGES 2

// The transpose of an 8x8 b16 matrix held as the m8n8 fragment (lane 4g + t: row g, columns 2t, 2t + 1).
__device__ __forceinline__ unsigned movmatrix_trans(unsigned a) {
  unsigned d;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(d) : "r"(a));
  return d;
}

// N bytes of shared memory at p (N even; p aligned to the largest of 16, 8, 4, 2 dividing N) -> words w[ceil(N / 4)].
template <int N> __device__ __forceinline__ void dtc_load_bytes(unsigned* w, const unsigned char* p) {
  if constexpr (N % 16 == 0) {
#pragma unroll
    for (int i = 0; i < N / 16; i++) {
      const uint4 v = reinterpret_cast<const uint4*>(p)[i];
      w[4 * i] = v.x; w[4 * i + 1] = v.y; w[4 * i + 2] = v.z; w[4 * i + 3] = v.w;
    }
  } else if constexpr (N % 8 == 0) {
#pragma unroll
    for (int i = 0; i < N / 8; i++) {
      const uint2 v = reinterpret_cast<const uint2*>(p)[i];
      w[2 * i] = v.x; w[2 * i + 1] = v.y;
    }
  } else if constexpr (N % 4 == 0) {
#pragma unroll
    for (int i = 0; i < N / 4; i++) w[i] = reinterpret_cast<const unsigned*>(p)[i];
  } else {
    static_assert(N % 2 == 0, "an even number of bytes");
#pragma unroll
    for (int i = 0; i < (N + 3) / 4; i++) {
      const unsigned lo = reinterpret_cast<const unsigned short*>(p)[2 * i];
      const unsigned hi = 2 * i + 1 < N / 2 ? reinterpret_cast<const unsigned short*>(p)[2 * i + 1] : 0u;
      w[i] = lo | (hi << 16);
    }
  }
}

__device__ __forceinline__ unsigned dtc_e4m3x2(unsigned codes16) {
  const __half2 h = kv_e4m3x2_to_half2((unsigned short)codes16);
  return *reinterpret_cast<const unsigned*>(&h);
}

// The MMAs' input type: f16 for an fp8 cache (E4M3 converts to it exactly), else T.
template <typename T, bool F8> struct DtcMma { typedef T type; };
template <typename T> struct DtcMma<T, true> { typedef f16 type; };
template <typename A, typename B> struct DtcSame { static constexpr bool value = false; };
template <typename A> struct DtcSame<A, A> { static constexpr bool value = true; };

// Two T (one word) -> two M for the MMAs: the same type as it is; bf16 -> f16 saturating at +-65504.
template <typename T, typename M> __device__ __forceinline__ unsigned dtc_to_mma(unsigned w) {
  if constexpr (DtcSame<T, M>::value) {
    return w;
  } else {
    const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w));
    return pack2<f16>(fminf(fmaxf(f.x, -65504.f), 65504.f), fminf(fmaxf(f.y, -65504.f), 65504.f));
  }
}

template <typename T, typename C, int D, int NB>
__device__ void attn_decode_tc(PGN_DECODE_PARAMS(T, C), float kScale, float vScale) {
  constexpr bool F8 = sizeof(C) == 1;
  using M = typename DtcMma<T, F8>::type;
  constexpr int NW = PGN_DTC_WARPS, BN = PGN_DTC_KEYS, STAGES = PGN_DTC_STAGES;
  constexpr int RS = D + 16 / (int)sizeof(C);  // a ring row, in cache elements (16 bytes of padding)
  constexpr int STAGE = BN * RS;                // one K (or V) stage
  constexpr int CHUNK = 16 / sizeof(C);         // cache elements a 16-byte copy moves
  constexpr int ROW_CHUNKS = D / CHUNK;         // 16-byte copies a cache row takes
  constexpr int KK = D / 16;                    // S^T's k steps; O^T's d blocks
  constexpr int H = 8 * NB;                     // head columns
  extern __shared__ __align__(16) unsigned char smemRaw[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  C* ring = reinterpret_cast<C*>(smemRaw) + warp * (STAGES * 2 * STAGE);  // [stage][K | V][16][RS]

  const int seq = blockIdx.z, split = blockIdx.x, kvHead = blockIdx.y;
  const int group = numHeads / numKvHeads, h0 = kvHead * group;
  const DecodeKeys keys = decode_split_keys(cuSeqlensQ, contextLens, seq, split, numSplits, window);
  const int qRow = keys.qRow, pos = keys.pos, jBegin = keys.jBegin, jEnd = keys.jEnd;
  const int qStride = (numHeads + 2 * numKvHeads) * D, kvStride = numKvHeads * D;
  const int* table = blockTables + (long long)seq * maxBlocksPerSeq;
  const bool plain = softcap == 0.f && alibiSlopes == nullptr;

  // this warp's tiles: keys jBegin + 16 (warp + NW i)
  const int numTiles = jEnd > jBegin ? (jEnd - jBegin + BN - 1) / BN : 0;
  auto loadTile = [&](int tile, int stage) {
    const int n0 = jBegin + tile * BN;
    C* dK = ring + (2 * stage) * STAGE;
    C* dV = dK + STAGE;
    for (int i = lane; i < BN * ROW_CHUNKS; i += 32) {
      const int r = i / ROW_CHUNKS, c = (i - r * ROW_CHUNKS) * CHUNK;
      const int j = n0 + r;
      const bool valid = j < jEnd;
      long long slot = 0;
      if (valid) slot = (long long)table[j / blockSize] * blockSize + j % blockSize;
      const long long src = slot * kvStride + kvHead * D + c;
      cp_async16(dK + r * RS + c, kCache + src, valid);
      cp_async16(dV + r * RS + c, vCache + src, valid);
    }
  };
  // STAGES - 1 tiles in flight ahead of the one computed, one commit group a tile
#pragma unroll
  for (int st = 0; st < STAGES - 1; st++) {
    if (warp + st * NW < numTiles) loadTile(warp + st * NW, st);
    cp_async_commit();
  }

  // Q^T as B fragments: head nb * 8 + g; k step kk's columns 2t, 2t + 1 (b0) and 2t + 8, 2t + 9 (b1), at the
  // fp8 kernels' permuted d (t D/4 + 4 kk + 0..3) or in order (16 kk + 2t, 16 kk + 2t + 8)
  unsigned qb[NB][KK][2];
#pragma unroll
  for (int nb = 0; nb < NB; nb++) {
    const int head = nb * 8 + g;
    const T* q = qkv + (long long)qRow * qStride + (h0 + head) * D;
#pragma unroll
    for (int kk = 0; kk < KK; kk++) {
      unsigned w0 = 0u, w1 = 0u;
      if (head < group) {
        if constexpr (F8) {
          const uint2 v = *reinterpret_cast<const uint2*>(q + t * (D / 4) + 4 * kk);
          w0 = v.x; w1 = v.y;
        } else {
          w0 = *reinterpret_cast<const unsigned*>(q + 16 * kk + 2 * t);
          w1 = *reinterpret_cast<const unsigned*>(q + 16 * kk + 2 * t + 8);
        }
      }
      qb[nb][kk][0] = dtc_to_mma<T, M>(w0);
      qb[nb][kk][1] = dtc_to_mma<T, M>(w1);
    }
  }

  float o[NB][KK][4];
#pragma unroll
  for (int nb = 0; nb < NB; nb++)
#pragma unroll
    for (int i = 0; i < KK; i++) o[nb][i][0] = o[nb][i][1] = o[nb][i][2] = o[nb][i][3] = 0.f;
  // the softmax state of this lane's heads nb * 8 + 2t + c; lRow sums only this lane's keys until the end
  float mRow[NB][2], lRow[NB][2], slope[NB][2];
#pragma unroll
  for (int nb = 0; nb < NB; nb++)
#pragma unroll
    for (int c = 0; c < 2; c++) {
      const int head = nb * 8 + 2 * t + c;
      mRow[nb][c] = PGN_NEG_INF;
      lRow[nb][c] = 0.f;
      slope[nb][c] = alibiSlopes && head < group ? alibiSlopes[h0 + head] : 0.f;
    }
  const float qkScale = (plain ? scale * PGN_LOG2E : scale) * kScale;

  int stage = 0;
  for (int tile = warp; tile < numTiles; tile += NW, stage = stage + 1 == STAGES ? 0 : stage + 1) {
    const int ahead = tile + (STAGES - 1) * NW;
    if (ahead < numTiles) loadTile(ahead, stage == 0 ? STAGES - 1 : stage - 1);  // the stage computed last
    cp_async_commit();
    cp_async_wait<STAGES - 1>();  // this tile's K and V
    __syncwarp();
    const C* sK = ring + (2 * stage) * STAGE;
    const C* sV = sK + STAGE;

    // S^T = K Q^T: keys g (s[.][0..1]) and g + 8 (s[.][2..3]), heads 2t, 2t + 1
    float s[NB][4];
#pragma unroll
    for (int nb = 0; nb < NB; nb++) s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.f;
    if constexpr (F8) {
      unsigned k0[KK], k1[KK];  // rows g and g + 8, bytes t D/4 .. (t + 1) D/4
      dtc_load_bytes<D / 4>(k0, reinterpret_cast<const unsigned char*>(sK + g * RS + t * (D / 4)));
      dtc_load_bytes<D / 4>(k1, reinterpret_cast<const unsigned char*>(sK + (g + 8) * RS + t * (D / 4)));
#pragma unroll
      for (int kk = 0; kk < KK; kk++) {
        const unsigned a[4] = {dtc_e4m3x2(k0[kk] & 0xffffu), dtc_e4m3x2(k1[kk] & 0xffffu), dtc_e4m3x2(k0[kk] >> 16), dtc_e4m3x2(k1[kk] >> 16)};
#pragma unroll
        for (int nb = 0; nb < NB; nb++) mma16816<M>(s[nb], a, qb[nb][kk][0], qb[nb][kk][1]);
      }
    } else {
#pragma unroll
      for (int kk = 0; kk < KK; kk++) {
        unsigned a[4];
        ldmatrix_x4(a, sK + ((lane & 7) + ((lane >> 3) & 1) * 8) * RS + 16 * kk + (lane >> 4) * 8);
#pragma unroll
        for (int nb = 0; nb < NB; nb++) mma16816<M>(s[nb], a, qb[nb][kk][0], qb[nb][kk][1]);
      }
    }

    // online softmax of each head (column): its 16 keys are spread over the 8 lanes of one t
    const int n0 = jBegin + tile * BN;
    unsigned pb[NB][2];
#pragma unroll
    for (int nb = 0; nb < NB; nb++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int j = n0 + g + (e >> 1) * 8;
        float x = s[nb][e] * qkScale;
        if (!plain) {
          if (softcap > 0.f) x = softcap * tanhf(x / softcap);
          x = (x + slope[nb][e & 1] * (float)(j - pos)) * PGN_LOG2E;
        }
        s[nb][e] = j < jEnd ? x : PGN_NEG_INF;
      }
#pragma unroll
      for (int c = 0; c < 2; c++) {
        float mx = fmaxf(s[nb][c], s[nb][c + 2]);
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
        mx = fmaxf(mx, mRow[nb][c]);
        const float mUse = mx == PGN_NEG_INF ? 0.f : mx;
        const float alpha = fast_exp2(mRow[nb][c] - mUse);
        mRow[nb][c] = mx;
        const float p0 = fast_exp2(s[nb][c] - mUse), p1 = fast_exp2(s[nb][c + 2] - mUse);
        lRow[nb][c] = lRow[nb][c] * alpha + p0 + p1;
        s[nb][c] = p0;
        s[nb][c + 2] = p1;
#pragma unroll
        for (int i = 0; i < KK; i++) { o[nb][i][c] *= alpha; o[nb][i][c + 2] *= alpha; }
      }
      // P^T's B fragments: the accumulator layout holds P^T's rows (keys); transposed, its columns
      pb[nb][0] = movmatrix_trans(pack2<M>(s[nb][0], s[nb][1]));  // keys 0..7
      pb[nb][1] = movmatrix_trans(pack2<M>(s[nb][2], s[nb][3]));  // keys 8..15
    }

    // O^T += V^T P^T
    if constexpr (F8) {
      constexpr int VB = D / 8;  // bytes of a V row this lane reads: d g D/8 .. (g + 1) D/8, two a d block
      unsigned r[4][(VB + 3) / 4];  // key rows 2t, 2t + 1, 2t + 8, 2t + 9
#pragma unroll
      for (int k = 0; k < 4; k++)
        dtc_load_bytes<VB>(r[k], reinterpret_cast<const unsigned char*>(sV + (2 * t + (k & 1) + (k >> 1) * 8) * RS + g * VB));
#pragma unroll
      for (int i = 0; i < KK; i++) {
        const int w = (2 * i) >> 2, b = (2 * i) & 3;
        const unsigned sel = b | ((4 + b) << 4) | ((b + 1) << 8) | ((5 + b) << 12);
        const unsigned lo = __byte_perm(r[0][w], r[1][w], sel);  // keys 2t, 2t + 1 at d 2i (low half), 2i + 1
        const unsigned hi = __byte_perm(r[2][w], r[3][w], sel);  // keys 2t + 8, 2t + 9
        const unsigned a[4] = {dtc_e4m3x2(lo & 0xffffu), dtc_e4m3x2(lo >> 16), dtc_e4m3x2(hi & 0xffffu), dtc_e4m3x2(hi >> 16)};
#pragma unroll
        for (int nb = 0; nb < NB; nb++) mma16816<M>(o[nb][i], a, pb[nb][0], pb[nb][1]);
      }
    } else {
#pragma unroll
      for (int i = 0; i < KK; i++) {
        unsigned a[4];
        ldmatrix_x4_trans(a, sV + ((lane & 7) + (lane >> 4) * 8) * RS + 16 * i + ((lane >> 3) & 1) * 8);
#pragma unroll
        for (int nb = 0; nb < NB; nb++) mma16816<M>(o[nb][i], a, pb[nb][0], pb[nb][1]);
      }
    }
    __syncwarp();  // every lane is done with this stage before it is refilled
  }
  cp_async_wait<0>();

  PGN_PDL_TRIGGER();  // the key loop is done: the next kernel may be scheduled

  // merge the warps: (m, l) a head and the accumulators through shared memory (the rings are free now)
#pragma unroll
  for (int nb = 0; nb < NB; nb++)
#pragma unroll
    for (int c = 0; c < 2; c++) {
      lRow[nb][c] += __shfl_xor_sync(0xffffffffu, lRow[nb][c], 4);
      lRow[nb][c] += __shfl_xor_sync(0xffffffffu, lRow[nb][c], 8);
      lRow[nb][c] += __shfl_xor_sync(0xffffffffu, lRow[nb][c], 16);
    }
  __syncthreads();
  float* so = reinterpret_cast<float*>(smemRaw);  // [NW][H][D]
  __shared__ float sm[NW][H], sl[NW][H];
#pragma unroll
  for (int nb = 0; nb < NB; nb++)
#pragma unroll
    for (int c = 0; c < 2; c++) {
      const int head = nb * 8 + 2 * t + c;
      if (g == 0) { sm[warp][head] = mRow[nb][c]; sl[warp][head] = lRow[nb][c]; }
      if (head < group) {
        float* dst = so + (warp * H + head) * D;
#pragma unroll
        for (int i = 0; i < KK; i++)
#pragma unroll
          for (int h = 0; h < 2; h++) dst[F8 ? g * (D / 8) + 2 * i + h : 16 * i + g + 8 * h] = o[nb][i][c + 2 * h];
      }
    }
  __syncthreads();
  decode_merge_warps<T, NW, H>(out, partialO, partialML, sm, sl, so, group, h0, D, numHeads, qRow, seq, split, numSplits, vScale);
}

// fp8 caches with up to 8 heads a group: ~37 KB shared at D = 128, so registers (launch bound) decide the blocks
// an SM; 16-bit caches: ~70 KB (3 an SM). Keep in step with decodeTcBlocksPerSm in cuda-attention.ts.
#define PGN_DECODE_TC(T, S, D, NB)                                                                                 \
  extern "C" __global__ void __launch_bounds__(32 * PGN_DTC_WARPS, 3) attn_decode_tc_##S##_d##D##_n##NB(            \
      PGN_DECODE_PARAMS(T, T)) {                                                                                   \
    PGN_PDL_WAIT();                                                                                                \
    attn_decode_tc<T, T, D, NB>(PGN_DECODE_ARGS, 1.f, 1.f);                                                        \
    PGN_PDL_TRIGGER();                                                                                             \
  }                                                                                                                \
  extern "C" __global__ void __launch_bounds__(32 * PGN_DTC_WARPS, NB == 1 ? 5 : 3) attn_decode_tc_fp8_##S##_d##D##_n##NB( \
      PGN_DECODE_PARAMS(T, kv_fp8_t), float kScale, float vScale) {                                                \
    PGN_PDL_WAIT();                                                                                                \
    attn_decode_tc<T, kv_fp8_t, D, NB>(PGN_DECODE_ARGS, kScale, vScale);                                           \
    PGN_PDL_TRIGGER();                                                                                             \
  }
#define PGN_DECODE_TC_D(T, S, D) PGN_DECODE_TC(T, S, D, 1) PGN_DECODE_TC(T, S, D, 2)
#define PGN_DECODE_TC_ALL(T, S) PGN_DECODE_TC_D(T, S, 64) PGN_DECODE_TC_D(T, S, 80) PGN_DECODE_TC_D(T, S, 96) PGN_DECODE_TC_D(T, S, 128)

PGN_HALF_TYPES(PGN_DECODE_TC_ALL)
