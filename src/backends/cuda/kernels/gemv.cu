// Decode-shaped linears on tensor cores: out [M, N] = x [M, K] @ w [N, K]^T (+ bias [N]),
// M <= 16 rows of x, bf16/f16 operands, f32 accumulation, out in the operand dtype or f32.
//
// Weights are streamed once with 16-byte loads (L1 bypassed). A block owns 16 weight rows
// (the A operand of m16n8k16, rows = n) and splits K over its warps; x is the B operand (its
// rows are the mma's n8 columns: one n8 tile for M <= 8, two for M <= 16). The warps' partial
// sums meet in shared memory, and the block writes its [M, 16] slice of out with the bias.
//
// K order inside a 32-wide chunk: the reduction does not care in which order k is summed, so
// lane (g, t) = (lane / 4, lane % 4) loads w[n0 + g][32c + 8t .. +8], w[n0 + g + 8][...] and
// x[g][32c + 8t .. +8] as whole 16-byte packs, and feeds elements 8t+0..3 to one mma and
// 8t+4..7 to the next. In mma terms logical k 2t+e <-> 8t+e and 2t+8+e <-> 8t+2+e (then +4
// for the second mma), the same map for A and B, so each product pairs the right elements.
// Requires K % 8 == 0 and 16-byte aligned x and w (the host checks).
//
// The pipelined kernels (PIPE, suffix p) request the next step's weights before this step's MMAs, so two steps of
// loads are in flight a warp; without it a warp's loads wait on its MMAs, and a short K (o_proj: 4 steps a warp)
// never fills the memory pipe: H200, 2026-11-28, o_proj at 1 row 12.1 -> 9.4 us (65% -> 84% of copy bandwidth).
//
// Grid: ceil(N / 16) blocks of 32 * numWarps threads; dynamic shared memory
// numWarps * 16 * (MT + 1) floats. No atomics and no scratch: deterministic, graph-safe.
#include "mma.cuh"

#define PGN_GEMV_MAX_THREADS 256

// 16 bytes read once: skip L1 so that x, which every block re-reads, stays there.
__device__ __forceinline__ uint4 gemv_load_stream(const void* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

// The same, kept in place by the compiler (volatile): the loads before PGN_PDL_WAIT must stay before it.
__device__ __forceinline__ uint4 gemv_load_stream_early(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

// biasKind: 0 none, 1 f32, 2 bf16, 3 f16
__device__ __forceinline__ float gemv_bias(const void* bias, int biasKind, int n) {
  switch (biasKind) {
    case 1: return reinterpret_cast<const float*>(bias)[n];
    case 2: return to_f32(reinterpret_cast<const bf16*>(bias)[n]);
    case 3: return to_f32(reinterpret_cast<const f16*>(bias)[n]);
    default: return 0.f;
  }
}

// One 32-k chunk: weight rows g (lo) and g+8 (hi) as A, x packs xb[nt][j] as B.
template <typename T, int NT, int U>
__device__ __forceinline__ void gemv_mma(float (&acc)[NT][4], const uint4& lo, const uint4& hi, const uint4 (&xb)[NT][U], int j) {
  const unsigned a0[4] = {lo.x, hi.x, lo.y, hi.y};
  const unsigned a1[4] = {lo.z, hi.z, lo.w, hi.w};
#pragma unroll
  for (int nt = 0; nt < NT; nt++) {
    mma16816<T>(acc[nt], a0, xb[nt][j].x, xb[nt][j].y);
    mma16816<T>(acc[nt], a1, xb[nt][j].z, xb[nt][j].w);
  }
}

// MT = 8 * NT: x rows the kernel can take (M <= MT); U = chunks of 32 k loaded per step; PIPE: two steps in flight.
template <typename T, typename TO, int NT, int U, bool PIPE>
__device__ __forceinline__ void gemv_rows16(TO* out, const T* x, const T* w, const void* bias, int M, int N, int K,
                                            int biasKind) {
  constexpr int MT = 8 * NT, STRIDE = MT + 1;  // +1: no bank conflicts in the final sum
  extern __shared__ float gemv_partial[];      // [numWarps][16][STRIDE]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, numWarps = blockDim.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * 16;
  // rows past N read row N-1 (valid memory) and are never stored
  const T* wLo = w + (long long)min(n0 + g, N - 1) * K + 8 * t;
  const T* wHi = w + (long long)min(n0 + g + 8, N - 1) * K + 8 * t;
  const T* xRow[NT];
  bool hasRow[NT];
#pragma unroll
  for (int nt = 0; nt < NT; nt++) {
    hasRow[nt] = g + 8 * nt < M;
    xRow[nt] = x + (long long)min(g + 8 * nt, M - 1) * K + 8 * t;
  }
  const int numChunks = (K + 31) >> 5;
  const int perWarp = ((numChunks + numWarps - 1) / numWarps + U - 1) / U * U;
  const int cBegin = warp * perWarp, cEnd = min(cBegin + perWarp, numChunks);
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);

  float acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;

  // whole chunks, U at a time, no bounds checks; then the warp's last chunks one by one. The first U
  // chunks' weights load before PGN_PDL_WAIT: under PDL they stream while the previous kernel finishes.
  // PIPE: the next U chunks' weights are requested before this step's MMAs (two steps of loads in flight).
  const int fullEnd = min(cEnd, K >> 5);
  int c = cBegin;
  uint4 lo[U], hi[U];
  if (c + U <= fullEnd) {
#pragma unroll
    for (int j = 0; j < U; j++) {
      lo[j] = gemv_load_stream_early(wLo + (c + j) * 32);
      hi[j] = gemv_load_stream_early(wHi + (c + j) * 32);
    }
  }
  PGN_PDL_WAIT();
  for (; c + U <= fullEnd; c += U) {
    uint4 xb[NT][U];
#pragma unroll
    for (int j = 0; j < U; j++) {
      const int k = (c + j) * 32;
      if (!PIPE && c != cBegin) {
        lo[j] = gemv_load_stream(wLo + k);
        hi[j] = gemv_load_stream(wHi + k);
      }
#pragma unroll
      for (int nt = 0; nt < NT; nt++) xb[nt][j] = hasRow[nt] ? __ldg(reinterpret_cast<const uint4*>(xRow[nt] + k)) : zero;
    }
    if (PIPE) {
      uint4 nlo[U], nhi[U];
      const bool more = c + 2 * U <= fullEnd;
      if (more) {
#pragma unroll
        for (int j = 0; j < U; j++) {
          nlo[j] = gemv_load_stream_early(wLo + (c + U + j) * 32);
          nhi[j] = gemv_load_stream_early(wHi + (c + U + j) * 32);
        }
      }
#pragma unroll
      for (int j = 0; j < U; j++) gemv_mma<T, NT>(acc, lo[j], hi[j], xb, j);
      if (more) {
#pragma unroll
        for (int j = 0; j < U; j++) {
          lo[j] = nlo[j];
          hi[j] = nhi[j];
        }
      }
    } else {
#pragma unroll
      for (int j = 0; j < U; j++) gemv_mma<T, NT>(acc, lo[j], hi[j], xb, j);
    }
  }
  for (; c < cEnd; c++) {
    const int k = c * 32;
    const bool ok = k + 8 * t < K;
    const uint4 lo = ok ? gemv_load_stream(wLo + k) : zero;
    const uint4 hi = ok ? gemv_load_stream(wHi + k) : zero;
    uint4 xb[NT][1];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) xb[nt][0] = ok && hasRow[nt] ? __ldg(reinterpret_cast<const uint4*>(xRow[nt] + k)) : zero;
    gemv_mma<T, NT>(acc, lo, hi, xb, 0);
  }

  PGN_PDL_TRIGGER();

  // C fragment: c0,c1 = (row g, x rows 2t, 2t+1), c2,c3 = (row g+8, same)
  float* mine = gemv_partial + warp * 16 * STRIDE;
#pragma unroll
  for (int nt = 0; nt < NT; nt++) {
    const int m = 8 * nt + 2 * t;
    mine[g * STRIDE + m] = acc[nt][0];
    mine[g * STRIDE + m + 1] = acc[nt][1];
    mine[(g + 8) * STRIDE + m] = acc[nt][2];
    mine[(g + 8) * STRIDE + m + 1] = acc[nt][3];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < 16 * M; i += blockDim.x) {
    const int m = i >> 4, r = i & 15, n = n0 + r;
    if (n >= N) continue;
    float s = 0.f;
    for (int v = 0; v < numWarps; v++) s += gemv_partial[(v * 16 + r) * STRIDE + m];
    if (biasKind) s += gemv_bias(bias, biasKind, n);
    out[(long long)m * N + n] = from_f32<TO>(s);
  }
}

// gemv_<dtype>_<out dtype>_m<MT>_u<U>[p](out, x, w, bias, M, N, K, biasKind); the p kernels pipeline their loads
#define PGN_GEMV(T, S, TO, SO, MT, U, PIPE, P)                                                                   \
  extern "C" __global__ void __launch_bounds__(PGN_GEMV_MAX_THREADS)                                           \
      gemv_##S##_##SO##_m##MT##_u##U##P(TO* out, const T* x, const T* w, const void* bias, int M, int N, int K,   \
                                        int biasKind) {                                                        \
    gemv_rows16<T, TO, MT / 8, U, PIPE>(out, x, w, bias, M, N, K, biasKind);                                    \
    PGN_PDL_TRIGGER();                                                                                          \
  }
#define PGN_GEMV_OUT(T, S, TO, SO)                                                                              \
  PGN_GEMV(T, S, TO, SO, 8, 4, false, ) PGN_GEMV(T, S, TO, SO, 8, 8, false, ) PGN_GEMV(T, S, TO, SO, 16, 4, false, ) \
  PGN_GEMV(T, S, TO, SO, 16, 8, false, ) PGN_GEMV(T, S, TO, SO, 8, 2, true, p) PGN_GEMV(T, S, TO, SO, 8, 4, true, p)
#define PGN_GEMV_ALL(T, S) PGN_GEMV_OUT(T, S, T, S) PGN_GEMV_OUT(T, S, float, f32)

PGN_HALF_TYPES(PGN_GEMV_ALL)
