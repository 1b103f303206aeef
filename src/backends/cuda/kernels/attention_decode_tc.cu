// Paged attention for decode on tensor cores, for grouped-query attention (GQA: 2..16 query heads
// a KV head). The group's query heads are the rows of one m16n8k16 A tile (rows past the group are
// zero), so each K and V row is read once for the whole group and every score and value product is
// an mma.sync: S = Q K^T (16 x 16 keys), online softmax in the log2 domain, O += P V.
//
// Grid (numSplits, numKvHeads, numSeqs), 4 warps. Each warp owns its own stream of 16-key tiles
// (tiles w, w + 4, ... of the split's keys) with a private cp.async ring of STAGES stages in shared
// memory, so the key loop needs no block barrier; its first tiles are requested before Q is staged;
// the warps' (max, sum, accumulator) are merged at the end.
// Splits (flash-decoding) and their partialO / partialML layout are those of attn_decode
// (attention_decode.cu), so attn_decode_combine finishes a split launch.
// An fp8 cache (C = kv_fp8_t) arrives as bytes in the ring and is converted to T (exactly) into
// one T tile before its MMAs; kScale is folded into the score scale and vScale into the output.
// Shared memory (dynamic): Q [16][D+8] T, then per warp: bf16 / f16 cache: STAGES (2) stages of K, V
// [16][D+8] T; fp8 cache: STAGES (2 or 4) stages of K, V [16][D] bytes + one K, V tile [16][D+8] T.
// Keep the layout in step with decodeTcSharedBytes in cuda-attention.ts.
#include "mma.cuh"
#include "kv_fp8.cuh"
#include "decode_common.cuh"

#define PGN_DTC_WARPS 4
#define PGN_DTC_KEYS 16

template <typename T, typename C, int D, int STAGES>
__device__ void attn_decode_tc(PGN_DECODE_PARAMS(T, C), float kScale, float vScale) {
  constexpr bool F8 = sizeof(C) == 1;
  constexpr int NW = PGN_DTC_WARPS, BN = PGN_DTC_KEYS, STRIDE = D + 8;
  constexpr int CHUNK = 16 / sizeof(C);               // cache elements a 16-byte copy moves
  constexpr int ROW_CHUNKS = D / CHUNK;               // 16-byte copies a cache row takes
  constexpr int STAGE_ELEMS = F8 ? BN * D : BN * STRIDE;  // one K (or V) stage, in C elements
  constexpr int WARP_ELEMS_C = STAGES * 2 * STAGE_ELEMS;  // the stages of K and V, in C elements
  constexpr int WARP_T_TILE = F8 ? 2 * BN * STRIDE : 0;  // fp8: the converted K and V tiles, in T elements
  extern __shared__ __align__(16) unsigned char smemRaw[];
  T* sQ = reinterpret_cast<T*>(smemRaw);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  unsigned char* warpBase = smemRaw + 16 * STRIDE * sizeof(T) + warp * (WARP_ELEMS_C * sizeof(C) + WARP_T_TILE * sizeof(T));
  C* ring = reinterpret_cast<C*>(warpBase);                                // [stage][K | V][STAGE_ELEMS]
  T* tileT = reinterpret_cast<T*>(warpBase + WARP_ELEMS_C * sizeof(C));     // fp8 only: [K | V][BN][STRIDE]

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
    C* dK = ring + (2 * stage) * STAGE_ELEMS;
    C* dV = dK + STAGE_ELEMS;
    for (int i = lane; i < BN * ROW_CHUNKS; i += 32) {
      const int r = i / ROW_CHUNKS, c = (i - r * ROW_CHUNKS) * CHUNK;
      const int j = n0 + r;
      const bool valid = j < jEnd;
      long long slot = 0;
      if (valid) slot = (long long)table[j / blockSize] * blockSize + j % blockSize;
      const long long src = slot * kvStride + kvHead * D + c;
      const int dst = F8 ? r * D + c : r * STRIDE + c;
      cp_async16(dK + dst, kCache + src, valid);
      cp_async16(dV + dst, vCache + src, valid);
    }
  };

  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float mRow[2] = {PGN_NEG_INF, PGN_NEG_INF}, lRow[2] = {0.f, 0.f};

  // STAGES - 1 tiles in flight ahead of the one computed, one commit group a tile
#pragma unroll
  for (int st = 0; st < STAGES - 1; st++) {
    if (warp + st * NW < numTiles) loadTile(warp + st * NW, st);
    cp_async_commit();
  }
  // Q rows: the group's heads, zero past it (after the first tiles' loads are on their way)
  for (int i = tid; i < 16 * (D / 8); i += blockDim.x) {
    const int r = i / (D / 8), c = (i - r * (D / 8)) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < group) v = *reinterpret_cast<const uint4*>(qkv + (long long)qRow * qStride + (h0 + r) * D + c);
    *reinterpret_cast<uint4*>(sQ + r * STRIDE + c) = v;
  }
  __syncthreads();
  unsigned qa[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; kk++) ldmatrix_x4(qa[kk], sQ + (lane & 15) * STRIDE + kk * 16 + (lane >> 4) * 8);

  const int g = lane >> 2, t = lane & 3;  // fragment row (head g and g + 8) and column pair
  const float qkScale = (plain ? scale * PGN_LOG2E : scale) * kScale;
  const float slope0 = alibiSlopes && g < group ? alibiSlopes[h0 + g] : 0.f;
  const float slope1 = alibiSlopes && g + 8 < group ? alibiSlopes[h0 + g + 8] : 0.f;

  int stage = 0;
  for (int tile = warp; tile < numTiles; tile += NW, stage = stage + 1 == STAGES ? 0 : stage + 1) {
    const int ahead = tile + (STAGES - 1) * NW;
    if (ahead < numTiles) loadTile(ahead, stage == 0 ? STAGES - 1 : stage - 1);  // the stage computed last
    cp_async_commit();
    cp_async_wait<STAGES - 1>();  // this tile's K and V
    __syncwarp();
    const T* sK;
    const T* sV;
    if constexpr (F8) {
      const C* bK = ring + (2 * stage) * STAGE_ELEMS;
      const C* bV = bK + STAGE_ELEMS;
      for (int i = lane; i < BN * (D / 8); i += 32) {
        const int r = i / (D / 8), c = (i - r * (D / 8)) * 8;
        *reinterpret_cast<uint4*>(tileT + r * STRIDE + c) = kv_fp8x8_to_pack<T>(*reinterpret_cast<const uint2*>(bK + r * D + c));
        *reinterpret_cast<uint4*>(tileT + BN * STRIDE + r * STRIDE + c) = kv_fp8x8_to_pack<T>(*reinterpret_cast<const uint2*>(bV + r * D + c));
      }
      __syncwarp();
      sK = tileT;
      sV = tileT + BN * STRIDE;
    } else {
      sK = reinterpret_cast<const T*>(ring + (2 * stage) * STAGE_ELEMS);
      sV = sK + STAGE_ELEMS;
    }

    // S = Q K^T: rows g, g + 8 (heads), keys n0 + 2t, +1 (s[0]) and n0 + 8 + 2t, +1 (s[1])
    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      unsigned b[4];
      ldmatrix_x4(b, sK + ((lane & 7) + ((lane >> 4) << 3)) * STRIDE + kk * 16 + ((lane >> 3) & 1) * 8);
      mma16816<T>(s[0], qa[kk], b[0], b[1]);
      mma16816<T>(s[1], qa[kk], b[2], b[3]);
    }
    const int n0 = jBegin + tile * BN;
#pragma unroll
    for (int nt = 0; nt < 2; nt++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int j = n0 + nt * 8 + 2 * t + (e & 1);
        float x = s[nt][e] * qkScale;
        if (!plain) {
          if (softcap > 0.f) x = softcap * tanhf(x / softcap);
          x = (x + (e < 2 ? slope0 : slope1) * (float)(j - pos)) * PGN_LOG2E;
        }
        s[nt][e] = j < jEnd ? x : PGN_NEG_INF;
      }
    }
    // online softmax of rows g (r = 0) and g + 8 (r = 1); a row's 16 keys are spread over the quad's 4 lanes
    float mUse[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
      float mx = fmaxf(mRow[r], fmaxf(fmaxf(s[0][2 * r], s[0][2 * r + 1]), fmaxf(s[1][2 * r], s[1][2 * r + 1])));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      mUse[r] = mx == PGN_NEG_INF ? 0.f : mx;
      const float alpha = fast_exp2(mRow[r] - mUse[r]);
      mRow[r] = mx;
      lRow[r] *= alpha;
#pragma unroll
      for (int i = 0; i < D / 8; i++) { o[i][2 * r] *= alpha; o[i][2 * r + 1] *= alpha; }
    }
#pragma unroll
    for (int nt = 0; nt < 2; nt++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const float p = fast_exp2(s[nt][e] - mUse[e >> 1]);
        s[nt][e] = p;
        lRow[e >> 1] += p;
      }
    }
    // O += P V (P as the A tile: its 16 columns are the tile's keys)
    const unsigned pa[4] = {pack2<T>(s[0][0], s[0][1]), pack2<T>(s[0][2], s[0][3]), pack2<T>(s[1][0], s[1][1]), pack2<T>(s[1][2], s[1][3])};
#pragma unroll
    for (int dt = 0; dt < D / 16; dt++) {
      unsigned b[4];
      ldmatrix_x4_trans(b, sV + (lane & 15) * STRIDE + dt * 16 + (lane >> 4) * 8);
      mma16816<T>(o[2 * dt], pa, b[0], b[1]);
      mma16816<T>(o[2 * dt + 1], pa, b[2], b[3]);
    }
    __syncwarp();  // every lane is done with this stage before it is refilled
  }
  cp_async_wait<0>();

  PGN_PDL_TRIGGER();  // the key loop is done: the next kernel may be scheduled

  // merge the warps: (m, l) a row and the accumulators through shared memory (the rings are free now)
#pragma unroll
  for (int r = 0; r < 2; r++) {
    lRow[r] += __shfl_xor_sync(0xffffffffu, lRow[r], 1);
    lRow[r] += __shfl_xor_sync(0xffffffffu, lRow[r], 2);
  }
  __syncthreads();
  float* so = reinterpret_cast<float*>(smemRaw + 16 * STRIDE * sizeof(T));  // [NW][16][D]
  __shared__ float sm[NW][16], sl[NW][16];
  if (t == 0) {
    sm[warp][g] = mRow[0]; sl[warp][g] = lRow[0];
    sm[warp][g + 8] = mRow[1]; sl[warp][g + 8] = lRow[1];
  }
#pragma unroll
  for (int i = 0; i < D / 8; i++) {
    float* row0 = so + (warp * 16 + g) * D + i * 8 + 2 * t;
    row0[0] = o[i][0]; row0[1] = o[i][1];
    row0[8 * D] = o[i][2]; row0[8 * D + 1] = o[i][3];
  }
  __syncthreads();
  decode_merge_warps<T, NW, 16>(out, partialO, partialML, sm, sl, so, group, h0, D, numHeads, qRow, seq, split, numSplits,
                                vScale);
}

#define PGN_DECODE_TC(T, S, D)                                                                                   \
  extern "C" __global__ void __launch_bounds__(32 * PGN_DTC_WARPS, 2) attn_decode_tc_##S##_d##D(PGN_DECODE_PARAMS(T, T)) { \
    PGN_PDL_WAIT();                                                                                              \
    attn_decode_tc<T, T, D, 2>(PGN_DECODE_ARGS, 1.f, 1.f);                                                       \
    PGN_PDL_TRIGGER();                                                                                           \
  }                                                                                                              \
  PGN_DECODE_TC_FP8(T, S, D, 2) PGN_DECODE_TC_FP8(T, S, D, 4)
#define PGN_DECODE_TC_FP8(T, S, D, ST)                                                                            \
  extern "C" __global__ void __launch_bounds__(32 * PGN_DTC_WARPS, 2)                                              \
      attn_decode_tc_fp8_##S##_d##D##_s##ST(PGN_DECODE_PARAMS(T, kv_fp8_t), float kScale, float vScale) {        \
    PGN_PDL_WAIT();                                                                                              \
    attn_decode_tc<T, kv_fp8_t, D, ST>(PGN_DECODE_ARGS, kScale, vScale);                                         \
    PGN_PDL_TRIGGER();                                                                                           \
  }
#define PGN_DECODE_TC_ALL(T, S) PGN_DECODE_TC(T, S, 64) PGN_DECODE_TC(T, S, 80) PGN_DECODE_TC(T, S, 96) PGN_DECODE_TC(T, S, 128)

PGN_HALF_TYPES(PGN_DECODE_TC_ALL)
