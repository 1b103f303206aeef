// Quantized linears (issue 6), in the formats QuantizedWeight (backends/backend.ts) documents: codes packed
// little-endian in 32-bit words along K (fp8 / int8 bytes, int4 nibbles), scales f32 [N, numGroups] (one per
// tensor allowed for fp8), int4 zero points f32 or 8 (symmetric).
// - quant_fp8_act: activations -> E4M3 (static input scale, or per token amax / 448), as fp8.ts does it;
//   quant_fp8_rows the same in one memory round trip for aligned rows;
// - quant_fp8_mma: FP8 GEMV for up to 16 tokens on tensor cores (mma m16n8k32 e4m3, sm_89+), both scales and
//   the bias applied in its epilogue;
// - quant_gemv: INT8 / INT4 weight-only GEMV for a few tokens (unpack, scale, FMA, f32 accumulation);
// - quant_dequant: weights -> the activation dtype, tile by tile (the path for many tokens: a half GEMM follows);
// - quant_scale_out / quant_bias_add: epilogues around cuBLASLt's GEMMs.
// The decode GEMV for every kind (cp.async-streamed, up to 8 tokens) is in quant_gemv.cu; shared helpers in
// quant.cuh.
// Output dtype (outKind): 0 f32, 1 bf16, 2 f16. Bias dtype (biasKind): 0 none, 1 f32, 2 bf16, 3 f16.
#include "quant.cuh"

// ---- FP8 activations -------------------------------------------------------------------------
// One block per token row of x [M, K] (K % 4 == 0). scale = *inputScale, or max(rowAmax / 448, minScale).
// Writes (each optional) xq [M, K] E4M3 as words, rowScales [M], and xfq [M, K]: the dequantized values in T.
template <typename T>
__device__ void quant_fp8_act(unsigned* xq, float* rowScales, T* xfq, const T* x, const float* inputScale, int K, float minScale) {
  __shared__ float red[32];
  const long long row = blockIdx.x;
  const T* xr = x + row * K;
  float s;
  if (inputScale != nullptr) {
    s = *inputScale;
  } else {
    float amax = 0.f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) amax = fmaxf(amax, fabsf(to_f32(xr[k])));
    s = fmaxf(__fdiv_rn(q_block_max(amax, red), PGN_E4M3_MAX), minScale);
  }
  if (rowScales != nullptr && threadIdx.x == 0) rowScales[row] = s;
  const int numWords = K >> 2;
  for (int kw = threadIdx.x; kw < numWords; kw += blockDim.x) {
    unsigned word = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const int k = 4 * kw + i;
      const unsigned q = e4m3_encode(__fdiv_rn(to_f32(xr[k]), s));
      word |= q << (8 * i);
      if (xfq != nullptr) xfq[row * K + k] = from_f32<T>(e4m3_decode(q) * s);
    }
    if (xq != nullptr) xq[row * numWords + kw] = word;
  }
}

#define PGN_QUANT_ACT(T, S)                                                                                     \
  extern "C" __global__ void __launch_bounds__(256) quant_fp8_act_##S(unsigned* xq, float* rowScales, T* xfq,      \
                                                                      const T* x, const float* inputScale, int K,  \
                                                                      float minScale) {                            \
    PGN_PDL_WAIT();                                                                                              \
    quant_fp8_act<T>(xq, rowScales, xfq, x, inputScale, K, minScale);                                            \
    PGN_PDL_TRIGGER();                                                                                           \
  }
PGN_HALF_TYPES(PGN_QUANT_ACT)

// quant_fp8_rows: the same for 16-byte aligned rows with K % 8 == 0 and K / 8 <= 8 * blockDim, one block per row
// with every thread's 16-byte units loaded at once and kept in registers between the amax and the encode (one
// memory round trip, where quant_fp8_act's strided loop makes many). Writes xq [M, K] and rowScales [M].
#define PGN_QROWS_UNITS 8
template <typename T>
__device__ void quant_fp8_rows(unsigned char* xq, float* rowScales, const T* x, const float* inputScale, int K, float minScale) {
  __shared__ float red[32];
  const long long row = blockIdx.x;
  const int kUnits = K >> 3;
  const T* xr = x + row * K;
  Pack<T> v[PGN_QROWS_UNITS];
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < PGN_QROWS_UNITS; i++) {
    const int u = threadIdx.x + i * blockDim.x;
    if (u < kUnits) {
      v[i] = load_pack(xr + u * 8);
#pragma unroll
      for (int e = 0; e < 8; e++) amax = fmaxf(amax, fabsf(v[i].get(e)));
    }
  }
  float s;
  if (inputScale != nullptr) s = *inputScale;
  else s = fmaxf(__fdiv_rn(q_block_max(amax, red), PGN_E4M3_MAX), minScale);
  if (threadIdx.x == 0) rowScales[row] = s;
#pragma unroll
  for (int i = 0; i < PGN_QROWS_UNITS; i++) {
    const int u = threadIdx.x + i * blockDim.x;
    if (u < kUnits) {
      unsigned q[2] = {0u, 0u};
#pragma unroll
      for (int e = 0; e < 8; e++) q[e >> 2] |= e4m3_encode(__fdiv_rn(v[i].get(e), s)) << (8 * (e & 3));
      *reinterpret_cast<uint2*>(xq + row * K + u * 8) = make_uint2(q[0], q[1]);
    }
  }
}

#define PGN_QUANT_ROWS(T, S)                                                                                      \
  extern "C" __global__ void __launch_bounds__(1024) quant_fp8_rows_##S(unsigned char* xq, float* rowScales, const T* x, \
                                                                        const float* inputScale, int K, float minScale) { \
    PGN_PDL_WAIT();                                                                                               \
    quant_fp8_rows<T>(xq, rowScales, x, inputScale, K, minScale);                                                 \
    PGN_PDL_TRIGGER();                                                                                            \
  }
PGN_HALF_TYPES(PGN_QUANT_ROWS)

// ---- dequantization -------------------------------------------------------------------------------
// Rows n0 .. n0 + rows of w [N, K] into out [rows, K] (16-byte aligned, K % 8 == 0 for int4, % 4 otherwise);
// one thread per 32-bit word of codes, its values stored with one 8- or 16-byte write.
template <typename T>
__device__ void quant_dequant(T* out, const unsigned* qw, const float* scales, const float* zeros, int kind, int n0, int rows,
                              int K, int groupSize, int perTensor) {
  const int vpw = kind == PGN_Q_INT4 ? 8 : 4;
  const int wpr = K / vpw;
  const int numG = (K + groupSize - 1) / groupSize;
  const long long total = (long long)rows * wpr;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
    const int r = (int)(i / wpr), kw = (int)(i % wpr);
    const long long n = n0 + r;
    const unsigned word = qw[n * wpr + kw];
    const int k0 = kw * vpw;
    Pack<T> pk;
    if (kind == PGN_Q_FP8) {
      const float s = scales[perTensor ? 0 : n];
#pragma unroll
      for (int j = 0; j < 4; j++) pk.set(j, e4m3_decode((word >> (8 * j)) & 0xffu) * s);
    } else if (kind == PGN_Q_INT8) {
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const float s = scales[n * numG + (k0 + j) / groupSize];
        pk.set(j, (float)(signed char)((word >> (8 * j)) & 0xffu) * s);
      }
    } else {
#pragma unroll
      for (int j = 0; j < 8; j++) {
        const long long gi = n * numG + (k0 + j) / groupSize;
        const float z = zeros != nullptr ? zeros[gi] : 8.f;
        pk.set(j, ((float)((word >> (4 * j)) & 0xfu) - z) * scales[gi]);
      }
    }
    T* o = out + (long long)r * K + k0;
    if (vpw == 8) *reinterpret_cast<uint4*>(o) = pk.raw;
    else *reinterpret_cast<uint2*>(o) = make_uint2(pk.raw.x, pk.raw.y);
  }
}

// The same, a thread per 16 bytes of codes (16 fp8 / int8 or 32 int4 values, one group: the host checks K %
// that == 0, groupSize % that == 0 for int formats, and 16-byte aligned codes): one 16-byte load, one scale and
// zero, one 32-bit division for the row; the values computed as quant_dequant computes them. The per-word
// kernel's 64-bit index division and a group division a value made it ALU-bound (INT4 gate_up at 128 tokens:
// 288 us against ~100 for the bytes).
template <typename T>
__device__ void quant_dequant16(T* out, const uint4* qw, const float* scales, const float* zeros, int kind, int n0, int rows, int K,
                                int groupSize, int perTensor) {
  const int vpu = kind == PGN_Q_INT4 ? 32 : 16;  // values a 16-byte unit
  const int upr = K / vpu;
  const int numG = (K + groupSize - 1) / groupSize;
  const int total = rows * upr;  // a tile: at most 32 MiB of T
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const int r = i / upr, c = i - r * upr, k0 = c * vpu;
    const long long n = n0 + r;
    const long long gi = kind == PGN_Q_FP8 ? (perTensor ? 0 : n) : n * numG + k0 / groupSize;
    const float z = kind == PGN_Q_INT4 ? (zeros != nullptr ? zeros[gi] : 8.f) : 0.f;
    q_dequant16(out + (long long)r * K + k0, qw[n * upr + c], kind, scales[gi], z);
  }
}

#define PGN_QUANT_DEQUANT(T, S)                                                                                 \
  extern "C" __global__ void __launch_bounds__(256) quant_dequant_##S(T* out, const unsigned* qw, const float* scales, \
                                                                      const float* zeros, int kind, int n0, int rows,  \
                                                                      int K, int groupSize, int perTensor) {           \
    PGN_PDL_WAIT();                                                                                              \
    quant_dequant<T>(out, qw, scales, zeros, kind, n0, rows, K, groupSize, perTensor);                           \
    PGN_PDL_TRIGGER();                                                                                           \
  }                                                                                                              \
  extern "C" __global__ void __launch_bounds__(256) quant_dequant16_##S(T* out, const uint4* qw, const float* scales,  \
                                                                        const float* zeros, int kind, int n0, int rows, \
                                                                        int K, int groupSize, int perTensor) {          \
    PGN_PDL_WAIT();                                                                                              \
    quant_dequant16<T>(out, qw, scales, zeros, kind, n0, rows, K, groupSize, perTensor);                         \
    PGN_PDL_TRIGGER();                                                                                           \
  }
PGN_HALF_TYPES(PGN_QUANT_DEQUANT)

// ---- INT8 / INT4 weight-only GEMV --------------------------------------------------------------------
// out [M, N] = x [M, K] @ dequant(w)^T (+ bias), M <= MT. One warp per two output rows; each lane takes 16-byte
// chunks of the rows' codes (16 int8 or 32 int4 values, inside one group: groupSize % that == 0) and the matching
// x, U chunks loaded ahead. Values become floats exactly through the 2^23 mantissa trick; per chunk
// acc += scale * sum((q - zero) * x), f32 throughout.
template <int KIND>
__device__ __forceinline__ void q_unpack(const uint4& w, float zero, float* v) {
  const unsigned words[4] = {w.x, w.y, w.z, w.w};
  if (KIND == PGN_Q_INT4) {
    const float off = PGN_MAGIC_2P23 + zero;
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
      for (int i = 0; i < 8; i++) v[8 * j + i] = __uint_as_float(0x4b000000u | ((words[j] >> (4 * i)) & 0xfu)) - off;
  } else {
    const float off = PGN_MAGIC_2P23 + 128.f;  // byte ^ 0x80 = q + 128 for two's-complement q
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
      for (int i = 0; i < 4; i++) v[4 * j + i] = __uint_as_float(0x4b000000u | (((words[j] >> (8 * i)) & 0xffu) ^ 0x80u)) - off;
  }
}

template <typename T, int KIND, int MT>
__device__ void quant_gemv(void* out, const T* __restrict__ x, const uint4* __restrict__ qw, const float* __restrict__ scales,
                           const float* __restrict__ zeros, const void* bias, int M, int N, int K, int groupSize, int outKind, int biasKind) {
  constexpr int E = KIND == PGN_Q_INT4 ? 32 : 16;
  constexpr int U = 4;  // chunks per lane loaded ahead
  constexpr int R = 2;  // rows per warp: each x value loaded serves both
  const int lane = threadIdx.x & 31;
  const int n0 = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * R;
  if (n0 >= N) return;  // whole warps
  const int chunks = K / E;
  const int numG = (K + groupSize - 1) / groupSize;
  const float defaultZero = KIND == PGN_Q_INT4 ? 8.f : 0.f;
  int rowOf[R];
  bool okRow[R];
#pragma unroll
  for (int r = 0; r < R; r++) {
    okRow[r] = n0 + r < N;
    rowOf[r] = okRow[r] ? n0 + r : n0;
  }
  float acc[R][MT];
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int m = 0; m < MT; m++) acc[r][m] = 0.f;
  for (int c0 = 0; c0 < chunks; c0 += 32 * U) {
    uint4 w[U][R];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int c = c0 + u * 32 + lane;
#pragma unroll
      for (int r = 0; r < R; r++) w[u][r] = c < chunks && okRow[r] ? __ldg(qw + (long long)rowOf[r] * chunks + c) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int c = c0 + u * 32 + lane;
      if (c < chunks) {
        const int k0 = c * E;
        float v[R][E], s[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
          const long long gi = (long long)rowOf[r] * numG + k0 / groupSize;
          s[r] = scales[gi];
          q_unpack<KIND>(w[u][r], KIND == PGN_Q_INT4 && zeros != nullptr ? zeros[gi] : defaultZero, v[r]);
        }
#pragma unroll
        for (int m = 0; m < MT; m++) {
          if (m < M) {
            const T* xr = x + (long long)m * K + k0;
            float dot[R];
#pragma unroll
            for (int r = 0; r < R; r++) dot[r] = 0.f;
#pragma unroll
            for (int p = 0; p < E / 8; p++) {
              const Pack<T> xp = load_pack(xr + 8 * p);
#pragma unroll
              for (int i = 0; i < 8; i++) {
                const float xv = xp.get(i);
#pragma unroll
                for (int r = 0; r < R; r++) dot[r] = fmaf(v[r][8 * p + i], xv, dot[r]);
              }
            }
#pragma unroll
            for (int r = 0; r < R; r++) acc[r][m] = fmaf(s[r], dot[r], acc[r][m]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; r++) {
    if (!okRow[r]) continue;
#pragma unroll
    for (int m = 0; m < MT; m++) {
      if (m < M) {
        const float sum = warp_sum(acc[r][m]);
        if (lane == 0) q_store(out, (long long)m * N + n0 + r, sum + q_bias(bias, n0 + r, biasKind), outKind);
      }
    }
  }
}

#define PGN_QUANT_GEMV(T, S, KIND, KS, MT)                                                                            \
  extern "C" __global__ void __launch_bounds__(128) quant_gemv_##KS##_##S##_m##MT(                                     \
      void* out, const T* x, const uint4* qw, const float* scales, const float* zeros, const void* bias, int M, int N,  \
      int K, int groupSize, int outKind, int biasKind) {                                                               \
    PGN_PDL_WAIT();                                                                                                    \
    quant_gemv<T, KIND, MT>(out, x, qw, scales, zeros, bias, M, N, K, groupSize, outKind, biasKind);                   \
    PGN_PDL_TRIGGER();                                                                                                 \
  }
#define PGN_QUANT_GEMV_M(T, S)                                                                                         \
  PGN_QUANT_GEMV(T, S, PGN_Q_INT8, int8, 1) PGN_QUANT_GEMV(T, S, PGN_Q_INT8, int8, 2)                                  \
  PGN_QUANT_GEMV(T, S, PGN_Q_INT8, int8, 4) PGN_QUANT_GEMV(T, S, PGN_Q_INT8, int8, 8)                                  \
  PGN_QUANT_GEMV(T, S, PGN_Q_INT4, int4, 1) PGN_QUANT_GEMV(T, S, PGN_Q_INT4, int4, 2)                                  \
  PGN_QUANT_GEMV(T, S, PGN_Q_INT4, int4, 4) PGN_QUANT_GEMV(T, S, PGN_Q_INT4, int4, 8)
PGN_HALF_TYPES(PGN_QUANT_GEMV_M)

// ---- FP8 GEMV on tensor cores ------------------------------------------------------------------------
// out [M, N] = (xq [M, K] . w [N, K]^T) * xs[m] * ws[n] (+ bias), M <= 8 * NT, K % 64 == 0; xq and w E4M3.
// A block owns 16 weight rows; its 8 warps take K steps of 64 round robin. In a step, thread (g = lane / 4,
// t = lane % 4) loads bytes t*16 .. t*16+15 of the step from rows g and g+8 and from tokens g (and g+8), and
// issues two m16n8k32 mmas per token tile: words 0,1 then words 2,3. The mma's own k order (a0/b0: k 4t..4t+3,
// a2/b1: k 16+4t..) is a permutation of the step's bytes shared by A and B, so the dot products are exact.
// Fragments (PTX ISA, 8-bit m16n8k32): a0 (row g), a1 (row g+8), a2 (row g), a3 (row g+8); c0,c1 (row g,
// tokens 2t, 2t+1), c2,c3 (row g+8, same tokens).
template <int NT>
__device__ void quant_fp8_mma(void* out, const unsigned char* xq, const float* xs, const unsigned char* w, const float* ws,
                              int wsPerTensor, const void* bias, int M, int N, int K, int outKind, int biasKind) {
  constexpr int WARPS = 8, U = 4;
  __shared__ float red[WARPS - 1][NT * 4][32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * 16;
  const bool ok0 = n0 + g < N, ok1 = n0 + g + 8 < N;
  const unsigned char* w0 = w + (long long)(ok0 ? n0 + g : 0) * K + t * 16;
  const unsigned char* w1 = w + (long long)(ok1 ? n0 + g + 8 : 0) * K + t * 16;
  const unsigned char* xr[NT];
  bool okx[NT];
#pragma unroll
  for (int j = 0; j < NT; j++) {
    okx[j] = 8 * j + g < M;
    xr[j] = xq + (long long)(okx[j] ? 8 * j + g : 0) * K + t * 16;
  }
  float c[NT][4];
#pragma unroll
  for (int j = 0; j < NT; j++) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.f;
  const int steps = K >> 6;
  for (int s0 = warp; s0 < steps; s0 += WARPS * U) {
    uint4 a[U][2], b[U][NT];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int s = s0 + u * WARPS;
      const bool in = s < steps;
      const long long off = (long long)s * 64;
      a[u][0] = q_ld16(w0 + off, in && ok0);
      a[u][1] = q_ld16(w1 + off, in && ok1);
#pragma unroll
      for (int j = 0; j < NT; j++) b[u][j] = q_ld16(xr[j] + off, in && okx[j]);
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
#pragma unroll
      for (int j = 0; j < NT; j++) {
        mma_e4m3(c[j], a[u][0].x, a[u][1].x, a[u][0].y, a[u][1].y, b[u][j].x, b[u][j].y);
        mma_e4m3(c[j], a[u][0].z, a[u][1].z, a[u][0].w, a[u][1].w, b[u][j].z, b[u][j].w);
      }
    }
  }
  PGN_PDL_TRIGGER();
  if (warp > 0) {
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
      for (int i = 0; i < 4; i++) red[warp - 1][j * 4 + i][lane] = c[j][i];
  }
  __syncthreads();
  if (warp != 0) return;
#pragma unroll
  for (int j = 0; j < NT; j++) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
      float v = c[j][i];
#pragma unroll
      for (int r = 0; r < WARPS - 1; r++) v += red[r][j * 4 + i][lane];
      const int n = n0 + g + (i >= 2 ? 8 : 0);
      const int m = 8 * j + 2 * t + (i & 1);
      if (n < N && m < M) q_store(out, (long long)m * N + n, v * xs[m] * ws[wsPerTensor ? 0 : n] + q_bias(bias, n, biasKind), outKind);
    }
  }
}

#define PGN_QUANT_MMA(NT)                                                                                               \
  extern "C" __global__ void __launch_bounds__(256) quant_fp8_mma_n##NT(                                                 \
      void* out, const unsigned char* xq, const float* xs, const unsigned char* w, const float* ws, int wsPerTensor,     \
      const void* bias, int M, int N, int K, int outKind, int biasKind) {                                                \
    PGN_PDL_WAIT();                                                                                                     \
    quant_fp8_mma<NT>(out, xq, xs, w, ws, wsPerTensor, bias, M, N, K, outKind, biasKind);                               \
    PGN_PDL_TRIGGER();                                                                                                  \
  }
PGN_QUANT_MMA(1)
PGN_QUANT_MMA(2)

// ---- epilogues ----------------------------------------------------------------------------------------
// out [M, N] = acc [M, ldAcc] * xs[m] * ws[n] (+ bias): cuBLASLt's unscaled FP8 product, scaled.
extern "C" __global__ void __launch_bounds__(256) quant_scale_out(void* out, const float* acc, int ldAcc, const float* xs,
                                                                  const float* ws, int wsPerTensor, const void* bias, int M,
                                                                  int N, int outKind, int biasKind) {
  PGN_PDL_WAIT();
  const long long total = (long long)M * N;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
    const int m = (int)(i / N), n = (int)(i % N);
    const float v = acc[(long long)m * ldAcc + n] * xs[m] * ws[wsPerTensor ? 0 : n];
    q_store(out, i, v + q_bias(bias, n, biasKind), outKind);
  }
  PGN_PDL_TRIGGER();
}

// out [M, N] += bias [N]
extern "C" __global__ void __launch_bounds__(256) quant_bias_add(void* out, const void* bias, int M, int N, int outKind, int biasKind) {
  PGN_PDL_WAIT();
  const long long total = (long long)M * N;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
    q_store(out, i, q_load(out, i, outKind) + q_bias(bias, (int)(i % N), biasKind), outKind);
  }
  PGN_PDL_TRIGGER();
}

// out[i] = src[0] for i < n (a per-tensor scale as the per-channel vector cuBLASLt's outer-vector scaling reads)
extern "C" __global__ void __launch_bounds__(256) quant_fill_f32(float* out, const float* src, int n) {
  PGN_PDL_WAIT();
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) out[i] = src[0];
  PGN_PDL_TRIGGER();
}

// Random 32-bit words (a hash of index and seed) AND mask: code tensors for benchmarks.
extern "C" __global__ void __launch_bounds__(256) quant_fill_codes(unsigned* out, long long n, unsigned seed, unsigned mask) {
  PGN_PDL_WAIT();
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    unsigned h = (unsigned)i * 0x9e3779b9u ^ seed;
    h ^= h >> 16; h *= 0x7feb352du; h ^= h >> 15; h *= 0x846ca68bu; h ^= h >> 16;
    out[i] = h & mask;
  }
  PGN_PDL_TRIGGER();
}

// ---- FP8 activations, one scale per tensor (PEREGRINE_FP8_TENSOR_ACT=1, many tokens) ------------------------
// quant_fp8_amax: |x| max over x [n] into *amaxBits (f32 bits of a non-negative value: unsigned order is float
// order; the caller zeroes it first). quant_fp8_tensor_scale: *scale = max(amax / 448, minScale). Then
// quant_fp8_rows with inputScale = scale encodes every row with that one scale, and cuBLASLt's FP8 GEMM takes
// scalar scales (no f32 scratch, no epilogue).
template <typename T>
__device__ void quant_fp8_amax(unsigned* amaxBits, const T* x, long long n) {
  __shared__ float red[32];
  float amax = 0.f;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) amax = fmaxf(amax, fabsf(to_f32(x[i])));
  amax = q_block_max(amax, red);
  if (threadIdx.x == 0) atomicMax(amaxBits, __float_as_uint(amax));
}

#define PGN_QUANT_AMAX(T, S)                                                                                    \
  extern "C" __global__ void __launch_bounds__(256) quant_fp8_amax_##S(unsigned* amaxBits, const T* x, long long n) { \
    PGN_PDL_WAIT();                                                                                              \
    quant_fp8_amax<T>(amaxBits, x, n);                                                                           \
    PGN_PDL_TRIGGER();                                                                                           \
  }
PGN_HALF_TYPES(PGN_QUANT_AMAX)

extern "C" __global__ void quant_fp8_tensor_scale(float* scale, const unsigned* amaxBits, float minScale) {
  PGN_PDL_WAIT();
  if (threadIdx.x == 0 && blockIdx.x == 0) *scale = fmaxf(__fdiv_rn(__uint_as_float(*amaxBits), PGN_E4M3_MAX), minScale);
  PGN_PDL_TRIGGER();
}
