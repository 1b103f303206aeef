// Tiled GEMM for INT8 / INT4 weight-only linears at prefill sizes (issue 6: "a path for prefill"): out [M, N] =
// x [M, K] @ dequant(w)^T (+ bias [N]), the weights dequantized into shared memory one 64-k chunk at a time
// exactly as quant_dequant rounds them ((q - zero) * scale in f32, then T), both operands through ldmatrix into
// m16n8k16 mma.sync, f32 accumulation. The dequantizing path writes every weight out as T and reads it back
// through cuBLASLt; here the codes are read once a 64-token tile of x and never leave the SM as T.
//
// Block: 256 threads, a tile of 64 tokens x 128 weight rows; warp (wm, wn) = (warp / 4, warp % 4) computes
// tokens 32 wm .. + 32 x rows 32 wn .. + 32 (2 x 4 m16n8 accumulators). Per chunk of 64 k: x [64][64] and the
// chunk's codes of the 128 rows (int4 32 bytes a row, int8 64) with each row's scale and zero (the chunk lies in
// one group: groupSize % 64 == 0) come by cp.async, two stages (chunk c + 1 loads while c computes); each
// thread then dequantizes 16 or 32 bytes of codes into w [128][64] T, and the warps run 4 k16 steps of MMAs.
// Rows of x and w are 72 T apart (144 bytes): the 8 rows of an ldmatrix land in 8 different 16-byte bank groups.
// Requirements (the host checks): K % 64 == 0, groupSize % 64 == 0 (one group a row: groupSize = K), x and the
// codes 16-byte aligned.
//
// Prepared without a GPU (2026-11-28, ninth session) and opt-in (PEREGRINE_INT_GEMM=1) until its GPU test and
// a measurement against the dequantizing path have run.
#include "mma.cuh"
#include "quant.cuh"

#define IG_BM 64
#define IG_BN 128
#define IG_BK 64
#define IG_LD 72  // T a row of the x / w tiles in shared memory
#define IG_THREADS 256

// Shared memory of one block (bytes), by kind: x stages, code stages, scale / zero stages, the w tile.
__host__ __device__ constexpr int ig_code_bytes(int kind) { return kind == PGN_Q_INT4 ? IG_BK / 2 : IG_BK; }
__host__ __device__ constexpr int ig_shared_bytes(int kind) {
  return 2 * IG_BM * IG_LD * 2 + 2 * IG_BN * ig_code_bytes(kind) + 2 * 2 * IG_BN * 4 + IG_BN * IG_LD * 2;
}

template <int KIND, typename T>
__device__ void quant_igemm(void* out, const T* x, const unsigned char* qw, const float* scales, const float* zeros, const void* bias, int M, int N,
                            int K, int groupSize, int outKind, int biasKind) {
  constexpr int CB = ig_code_bytes(KIND);  // code bytes of a row in a chunk
  extern __shared__ __align__(16) unsigned char ig_smem[];
  T* xs = reinterpret_cast<T*>(ig_smem);                                                   // [2][BM][LD]
  unsigned char* cs = ig_smem + 2 * IG_BM * IG_LD * sizeof(T);                             // [2][BN][CB]
  float* sz = reinterpret_cast<float*>(cs + 2 * IG_BN * CB);                               // [2][2][BN]: scales, zeros
  T* ws = reinterpret_cast<T*>(sz + 2 * 2 * IG_BN);                                        // [BN][LD]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 2, wn = warp & 3;
  const int mBase = blockIdx.y * IG_BM, nBase = blockIdx.x * IG_BN;
  const int numChunks = K / IG_BK, numG = (K + groupSize - 1) / groupSize;
  const long long rowBytes = KIND == PGN_Q_INT4 ? K / 2 : K;

  // chunk c's x, codes, scales and zeros into stage s (one commit group)
  auto load = [&](int c, int s) {
    const int k0 = c * IG_BK;
    for (int u = tid; u < IG_BM * (IG_BK / 8); u += IG_THREADS) {  // 16-byte units of x
      const int r = u >> 3, c8 = (u & 7) * 8, m = mBase + r;
      cp_async16(xs + (s * IG_BM + r) * IG_LD + c8, x + (long long)(m < M ? m : 0) * K + k0 + c8, m < M);
    }
    for (int u = tid; u < IG_BN * (CB / 16); u += IG_THREADS) {  // 16-byte units of codes
      const int r = u / (CB / 16), part = u % (CB / 16), n = nBase + r;
      cp_async16(cs + (s * IG_BN + r) * CB + part * 16, qw + (long long)(n < N ? n : 0) * rowBytes + (long long)k0 * CB / IG_BK + part * 16, n < N);
    }
    {
      const int r = tid & (IG_BN - 1), n = nBase + r, g = k0 / groupSize;
      const bool zero = tid >= IG_BN, valid = n < N && (!zero || zeros != nullptr);
      const float* src = (zero && zeros != nullptr ? zeros : scales) + (valid ? (long long)n * numG + g : 0);
      cp_async4(sz + (s * 2 + (zero ? 1 : 0)) * IG_BN + r, src, valid);
    }
    cp_async_commit();
  };

  float acc[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;
  // (the kernel's PGN_PDL_WAIT came first: x is the previous kernel's output)

  load(0, 0);
  for (int c = 0; c < numChunks; c++) {
    const int s = c & 1;
    if (c + 1 < numChunks) {
      load(c + 1, s ^ 1);  // stage s ^ 1 was last read by chunk c - 1, before the barrier that ended it
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    // codes of stage s -> w tile: each thread 16 bytes of one row (int4 32 values, int8 16), as quant_dequant16 does
    for (int u = tid; u < IG_BN * (CB / 16); u += IG_THREADS) {
      const int r = u / (CB / 16), part = u % (CB / 16);
      const uint4 q = *reinterpret_cast<const uint4*>(cs + (s * IG_BN + r) * CB + part * 16);
      const float scale = sz[(s * 2) * IG_BN + r];  // (read after the codes: the other order cost int8 31 registers)
      const float zero = KIND == PGN_Q_INT4 && zeros != nullptr ? sz[(s * 2 + 1) * IG_BN + r] : 8.f;  // int4 only
      q_dequant16(ws + r * IG_LD + part * (KIND == PGN_Q_INT4 ? 32 : 16), q, KIND, scale, zero);
    }
    __syncthreads();
    const T* xt = xs + s * IG_BM * IG_LD;
#pragma unroll
    for (int kk = 0; kk < IG_BK; kk += 16) {
      unsigned a[2][4], b[4][2];
      const int j = lane >> 3;  // the 8x8 matrix this lane addresses
#pragma unroll
      for (int mi = 0; mi < 2; mi++) ldmatrix_x4(a[mi], xt + (wm * 32 + mi * 16 + (j & 1) * 8 + (lane & 7)) * IG_LD + kk + (j >> 1) * 8);
#pragma unroll
      for (int np = 0; np < 2; np++) {
        unsigned r[4];
        ldmatrix_x4(r, ws + (wn * 32 + np * 16 + (j >> 1) * 8 + (lane & 7)) * IG_LD + kk + (j & 1) * 8);
        b[2 * np][0] = r[0];
        b[2 * np][1] = r[1];
        b[2 * np + 1][0] = r[2];
        b[2 * np + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++) mma16816<T>(acc[mi][ni], a[mi], b[ni][0], b[ni][1]);
    }
    __syncthreads();  // the w tile and stage s are free for the next chunk
  }

  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mi = 0; mi < 2; mi++)
#pragma unroll
    for (int ni = 0; ni < 4; ni++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int m = mBase + wm * 32 + mi * 16 + g + (e >> 1) * 8, n = nBase + wn * 32 + ni * 8 + 2 * t + (e & 1);
        if (m < M && n < N) q_store(out, (long long)m * N + n, acc[mi][ni][e] + q_bias(bias, n, biasKind), outKind);
      }
}

// quant_igemm_<int8|int4>_<dtype>(out, x, qw, scales, zeros, bias, M, N, K, groupSize, outKind, biasKind):
// grid (ceil(N / 128), ceil(M / 64)), 256 threads, ig_shared_bytes(kind) of dynamic shared memory
// (cuda-quant-igemm.ts computes the same).
#define PGN_QUANT_IGEMM_ONE(NAME, KIND, T)                                                                                    \
  extern "C" __global__ void __launch_bounds__(IG_THREADS) quant_igemm_##NAME(void* out, const T* x, const unsigned char* qw, \
                                                                              const float* scales, const float* zeros,         \
                                                                              const void* bias, int M, int N, int K,           \
                                                                              int groupSize, int outKind, int biasKind) {      \
    PGN_PDL_WAIT();                                                                                                           \
    quant_igemm<KIND, T>(out, x, qw, scales, zeros, bias, M, N, K, groupSize, outKind, biasKind);                             \
    PGN_PDL_TRIGGER();                                                                                                        \
  }
#define PGN_QUANT_IGEMM(T, S) PGN_QUANT_IGEMM_ONE(int8_##S, PGN_Q_INT8, T) PGN_QUANT_IGEMM_ONE(int4_##S, PGN_Q_INT4, T)
PGN_HALF_TYPES(PGN_QUANT_IGEMM)
