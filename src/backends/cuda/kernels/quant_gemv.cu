// Quantized GEMV for decode (issue 6): out [M, N] = x [M, K] @ dequant(w)^T (+ bias [N]) for M <= 8 tokens, FP8 /
// INT8 / INT4 weights in QuantizedWeight's layouts (backends/backend.ts), on tensor cores, streaming the weights
// at close to copy bandwidth. Same results as quant_fp8_mma / quant_gemv (and the CPU reference).
//
// Work: a tile is 16 weight rows (the mma's m16). Blocks are persistent (grid <= SMs x blocks per SM) and take
// tiles blockIdx.x, + gridDim.x, ...; warp w takes a tile's K steps w, w + 8, ... so that the block streams 512
// contiguous bytes of each row at a time. A step is 64 bytes of each of the 16 rows (64 fp8 / int8 or 128 int4
// values): lane (g, t) = (lane / 4, lane % 4) owns bytes 16t .. 16t+15 of rows g and g+8.
//
// Weights never wait in registers: each lane cp.asyncs its two 16-byte pieces (int formats: also one of its
// rows' step-group scale and zero: lane t of quad g copies row g's scale, row g + 8's, row g's zero, row g + 8's,
// and the quad reads the four back as one float4) into its own slots of a per-warp ring of S steps (QG_STAGES;
// fp8 rows of K >= 8192: 10), S - 1 steps ahead of the one it computes, across tile
// boundaries. So 40 KiB per block (72 with 10 steps) stay in flight whatever ptxas makes of the compute, and a
// lane only reads back what its own quad copied (a quad's lanes are one warp, the copies one commit group each):
// no barrier per step.
//
// x is staged once per block in shared memory: fp8 as E4M3 (copied when the caller quantized it, e.g. the fused
// RMSNorm, else quantized here from bf16 / f16 with the static scale or each row's amax / 448 as quant_fp8_act
// does, but multiplying by the reciprocal); int formats in the activation dtype. Lanes of tokens >= M read a
// zero slot.
//
// k order: a reduction does not care which physical k an mma's logical k stands for, so each lane feeds its 16
// bytes in the order that unpacks cheapest and reads x in the same order:
// - fp8 / int8 (m16n8k16): bytes (0,1) / (2,3) of word i are a0 / a2 of mma i, as f16 (E4M3 converts exactly;
//   sm_90 has no FP8 mma.sync, its m16n8k32 e4m3 is this same conversion plus more adds) or as T via f32 (int8,
//   exact); x alike (fp8: its E4M3 converted the same way).
// - int4 (m16n8k16): word i (k 8i .. 8i+7 of the lane's 32) gives nibble pairs (0,4), (1,5) to mma 2i and
//   (2,6), (3,7) to mma 2i+1, as (magic + q) - (magic + zero) in bf16 / f16: small integers, exact; each pair
//   is one LOP3 ((w >> 4j) & 0x000f000f | magic, the magic in a register). x is staged with each 8 values in
//   that order (x0 x4 x1 x5 x2 x6 x3 x7), so one 16-byte read gives the two mmas' B fragments as they are; x
//   rows are swizzled in shared memory so these reads hit no bank twice. ncu (H200, int4 gate_up_proj at 1
//   token): the integer pipe is what bounds this kernel (stall_math, not_selected), so every integer
//   instruction a step counts.
// Int formats scale each step's partial sums by its rows' group scales (f32); fp8 applies the token and weight
// scales at the end. The 8 warps' partial sums meet in shared memory at each tile's end.
//
// Dense kind (PGN_Q_DENSE: bf16 / f16 weights, cuda-ring-gemv.ts under PEREGRINE_GEMV=ring; K % 32 == 0): a step
// is 64 bytes = 32 k of each row, lane t's 16 bytes are k 8t .. 8t+7 and feed two m16n8k16 (k 8t..8t+3, then 8t+4..8t+7, x
// read in the same order, as gemv.cu does); x staged in the activation dtype, no scales.
//
// Shared memory (dynamic, laid out below; cuda-quant-gemv.ts computes the same size): the rings, a double
// buffer for the partial sums, the token scales, and x [M][xStride]. Requirements (the host checks): M <= 8,
// K % 64 == 0 (dense: K % 32 == 0; int4: K % 128 == 0 and groupSize % 128 == 0; int8: groupSize % 64 == 0), 16-byte aligned codes,
// x and xq; fp8 needs sm_89+.
#include "mma.cuh"
#include "quant.cuh"

#define QG_WARPS 8
#define QG_STAGES 6
#define QG_MAX_M 8
// blocks per SM the register budget must allow (<= 85 registers); the host never assumes more
#define QG_MIN_BLOCKS 3
// bytes per warp and stage: 2 rows x 32 lanes x 16 bytes of codes, + 32 lanes x 4 bytes of scales / zeros
#define QG_RING_W 1024
#define QG_RING_S 128

// cp.async with "memory" clobbers: the compiler keeps shared-memory reads of a slot after its wait and before
// the copy that refills it.
__device__ __forceinline__ void qg_cp16(unsigned smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void qg_cp16(void* smem, const void* gmem, bool valid) { qg_cp16(smem_u32(smem), gmem, valid); }
__device__ __forceinline__ void qg_cp4(unsigned smem, const void* gmem, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem), "l"(gmem), "r"(valid ? 4 : 0) : "memory");
}
__device__ __forceinline__ void qg_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void qg_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

__device__ __forceinline__ uint4 qg_lds16(const unsigned char* p) { return *reinterpret_cast<const uint4*>(p); }

// Shared-memory row stride of x in bytes: fp8 rows = 64 mod 128 and int rows = 16 mod 128, so the 8 lanes of
// one 16-byte load phase (tokens g, g+1; t = 0..3) land in 8 different 16-byte bank groups.
template <int KIND> __device__ __forceinline__ int qg_x_stride(int K) {
  if (KIND == PGN_Q_FP8) return K + ((64 - K) & 127);
  if (KIND == PGN_Q_DENSE) return 2 * K + ((64 - 2 * K) & 127);  // 16 bytes a lane, like fp8's
  return 2 * K + ((16 - 2 * K) & 127);
}

// int4 x: 16-byte unit u of a row is stored at u ^ 2 when bit 3 of u is set (lanes t and t+2 apart)
__device__ __forceinline__ int qg_swz(int u) { return u ^ (((u >> 3) & 1) << 1); }

// int4 codes OR-ed into these halves read as (magic + q), exactly: 128 + q in bf16, 1024 + q in f16
template <typename T> struct QgMagic;
template <> struct QgMagic<bf16> { static constexpr unsigned BITS = 0x43004300u; static constexpr float VALUE = 128.f; };
template <> struct QgMagic<f16> { static constexpr unsigned BITS = 0x64006400u; static constexpr float VALUE = 1024.f; };

// (w & 0x000f000f) | magic: nibbles 0 and 4 of w as two (magic + q) halves, in one LOP3 (the C expression with
// two constants compiles to two, one immediate an instruction; here the magic rides in a register)
template <typename T> __device__ __forceinline__ unsigned qg_nibbles(unsigned w) {
  unsigned d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(w), "n"(0x000f000f), "r"(QgMagic<T>::BITS));
  return d;
}

template <typename T> __device__ __forceinline__ unsigned qg_hsub2(unsigned a, unsigned b);
template <> __device__ __forceinline__ unsigned qg_hsub2<bf16>(unsigned a, unsigned b) {
  __nv_bfloat162 r = __hsub2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
  return *reinterpret_cast<unsigned*>(&r);
}
template <> __device__ __forceinline__ unsigned qg_hsub2<f16>(unsigned a, unsigned b) {
  __half2 r = __hsub2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
  return *reinterpret_cast<unsigned*>(&r);
}

// int8 bytes b, b+1 of w (already ^ 0x80808080: q + 128) -> two T, exactly: 0x4b0000XX is 2^23 + XX in f32.
template <typename T> __device__ __forceinline__ unsigned qg_i8pair(unsigned w, int b) {
  const float lo = __uint_as_float(__byte_perm(w, 0x4b000000u, 0x7540 + b)) - (PGN_MAGIC_2P23 + 128.f);
  const float hi = __uint_as_float(__byte_perm(w, 0x4b000000u, 0x7540 + b + 1)) - (PGN_MAGIC_2P23 + 128.f);
  return pack2<T>(lo, hi);
}

// E4M3 bytes (0,1) (HI false) / (2,3) (HI true) of w -> f16x2, exactly (sm_89+; the host sends fp8 here only there)
template <bool HI> __device__ __forceinline__ unsigned qg_e4m3_f16x2(unsigned w) {
  unsigned d = 0u;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  if constexpr (HI) asm("{ .reg .b16 l, h; mov.b32 {l, h}, %1; cvt.rn.f16x2.e4m3x2 %0, h; }" : "=r"(d) : "r"(w));
  else asm("{ .reg .b16 l, h; mov.b32 {l, h}, %1; cvt.rn.f16x2.e4m3x2 %0, l; }" : "=r"(d) : "r"(w));
#else
  __trap();
#endif
  return d;
}
// (lo, hi) f32 -> two E4M3 bytes in the low 16 bits (lo in the low byte): round to nearest even, saturating
__device__ __forceinline__ unsigned qg_e4m3x2(float lo, float hi) {
  unsigned short d = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(d) : "f"(hi), "f"(lo));
#else
  __trap();
#endif
  return d;
}

// One fp8 / int8 step of a lane: k = 64 step + 16t + (0..15), bytes (0,1) / (2,3) of word i are a0 / a2 of
// mma i (m16n8k16): fp8 as f16 (E4M3 values are exact in f16, products exact in the f32 sums), int8 as T.
// x: 16 E4M3 bytes (fp8) or 16 T (int8) of the lane's token at xp (a zero slot for tokens >= M).
template <int KIND, typename T>
__device__ __forceinline__ void qg_step64(float* c, const uint4& lo, const uint4& hi, const unsigned char* xp) {
  const unsigned wl[4] = {lo.x, lo.y, lo.z, lo.w}, wh[4] = {hi.x, hi.y, hi.z, hi.w};
  unsigned xw[8];
  if (KIND == PGN_Q_FP8) {
    const uint4 x = qg_lds16(xp);
    const unsigned xb[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      xw[2 * i] = qg_e4m3_f16x2<false>(xb[i]);
      xw[2 * i + 1] = qg_e4m3_f16x2<true>(xb[i]);
    }
  } else {
    const uint4 x0 = qg_lds16(xp), x1 = qg_lds16(xp + 16);
    xw[0] = x0.x; xw[1] = x0.y; xw[2] = x0.z; xw[3] = x0.w;
    xw[4] = x1.x; xw[5] = x1.y; xw[6] = x1.z; xw[7] = x1.w;
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    if (KIND == PGN_Q_FP8) {
      const unsigned a[4] = {qg_e4m3_f16x2<false>(wl[i]), qg_e4m3_f16x2<false>(wh[i]), qg_e4m3_f16x2<true>(wl[i]), qg_e4m3_f16x2<true>(wh[i])};
      mma16816<f16>(c, a, xw[2 * i], xw[2 * i + 1]);
    } else {
      const unsigned l = wl[i] ^ 0x80808080u, h = wh[i] ^ 0x80808080u;
      const unsigned a[4] = {qg_i8pair<T>(l, 0), qg_i8pair<T>(h, 0), qg_i8pair<T>(l, 2), qg_i8pair<T>(h, 2)};
      mma16816<T>(c, a, xw[2 * i], xw[2 * i + 1]);
    }
  }
}

// One dense step of a lane: k = 32 step + 8t + (0..7) of rows g (lo) and g+8 (hi), x's 8 values at xp.
template <typename T>
__device__ __forceinline__ void qg_step_dense(float* c, const uint4& lo, const uint4& hi, const unsigned char* xp) {
  const uint4 x = qg_lds16(xp);
  const unsigned a0[4] = {lo.x, hi.x, lo.y, hi.y}, a1[4] = {lo.z, hi.z, lo.w, hi.w};
  mma16816<T>(c, a0, x.x, x.y);
  mma16816<T>(c, a1, x.z, x.w);
}

// One int4 step of a lane: k = 128 step + 32t + (0..31); c += (rows - zero) . x (unscaled). xp[i]: the 8 x
// values of word i (k 8i .. 8i+7 of the lane) as staged (pairs (0,4), (1,5), (2,6), (3,7)), or the zero slot.
// The odd mmas sum into c1, so two chains of 4 dependent mmas instead of one of 8.
template <typename T>
__device__ __forceinline__ void qg_step_int4(float* c, const uint4& lo, const uint4& hi, const unsigned char* const* xp, int xoff, unsigned zl, unsigned zh) {
  const unsigned wl[4] = {lo.x, lo.y, lo.z, lo.w}, wh[4] = {hi.x, hi.y, hi.z, hi.w};
  float c1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const uint4 x = qg_lds16(xp[i] + xoff);
    const unsigned l = wl[i], h = wh[i];
    unsigned a[4];
    a[0] = qg_hsub2<T>(qg_nibbles<T>(l), zl);
    a[1] = qg_hsub2<T>(qg_nibbles<T>(h), zh);
    a[2] = qg_hsub2<T>(qg_nibbles<T>(l >> 4), zl);
    a[3] = qg_hsub2<T>(qg_nibbles<T>(h >> 4), zh);
    mma16816<T>(c, a, x.x, x.y);
    a[0] = qg_hsub2<T>(qg_nibbles<T>(l >> 8), zl);
    a[1] = qg_hsub2<T>(qg_nibbles<T>(h >> 8), zh);
    a[2] = qg_hsub2<T>(qg_nibbles<T>(l >> 12), zl);
    a[3] = qg_hsub2<T>(qg_nibbles<T>(h >> 12), zh);
    mma16816<T>(c1, a, x.z, x.w);
  }
#pragma unroll
  for (int j = 0; j < 4; j++) c[j] += c1[j];
}

// Calls f(u, m, unit) for each 16-byte unit u (of row m) of x [M, K] (T) this thread takes, QB loads in flight
// at a time: units u0, u0 + blockDim.x, ... load together, then f sees them in that order. units = M * kUnits;
// u >= units passes a zero unit (and m past the rows), which f must skip.
template <int QB, typename T, typename F>
__device__ __forceinline__ void qg_for_x_units(const T* x, int K, int kUnits, int units, F&& f) {
  for (int u0 = threadIdx.x; u0 < units; u0 += blockDim.x * QB) {
    uint4 v[QB];
#pragma unroll
    for (int b = 0; b < QB; b++) {
      const int u = u0 + b * blockDim.x, m = u / kUnits;
      v[b] = u < units ? __ldg(reinterpret_cast<const uint4*>(x + (long long)m * K + (u - m * kUnits) * 8)) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int b = 0; b < QB; b++) {
      const int u = u0 + b * blockDim.x;
      f(u, u / kUnits, v[b]);
    }
  }
}

// Every thread's per-row partials v[m] (max when MAX, else sum) combined over the block into scratch: returns,
// in threads tid < M, row tid's total (other threads: 0). scratch holds warps x QG_MAX_M floats; one barrier.
template <bool MAX> __device__ __forceinline__ float qg_block_rows(const float* v, float* scratch, int M) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
#pragma unroll
  for (int m = 0; m < QG_MAX_M; m++) {
    const float a = MAX ? warp_max(v[m]) : warp_sum(v[m]);
    if (lane == 0) scratch[warp * QG_MAX_M + m] = a;
  }
  __syncthreads();
  float a = 0.f;
  if (tid < M) {
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) a = MAX ? fmaxf(a, scratch[w * QG_MAX_M + tid]) : a + scratch[w * QG_MAX_M + tid];
  }
  return a;
}

// x [M, K] (T) -> E4M3 rows of xsm and their scales (static, or max(rowAmax / 448, minScale)); every thread.
// Values are multiplied by the scale's reciprocal (not divided, as quant_fp8_act does: at most one f32 ulp
// apart before the rounding to E4M3) and rounded by the hardware conversion: cheap enough for 8 tokens.
template <typename T>
__device__ __forceinline__ void qg_quantize_x(unsigned char* xsm, int xStride, float* xscale, float* scratch, const T* x, const float* inputScale, int M,
                                              int K, float minScale) {
  constexpr int QB = 4;  // 16-byte units per thread loaded together
  const int kUnits = K >> 3, units = M * kUnits, tid = threadIdx.x;
  if (inputScale == nullptr) {
    float amax[QG_MAX_M];
#pragma unroll
    for (int m = 0; m < QG_MAX_M; m++) amax[m] = 0.f;
    qg_for_x_units<QB>(x, K, kUnits, units, [&](int u, int m, const uint4& raw) {
      Pack<T> p;
      p.raw = raw;
      float a = 0.f;
#pragma unroll
      for (int e = 0; e < Pack<T>::N; e++) a = fmaxf(a, fabsf(p.get(e)));
#pragma unroll
      for (int mm = 0; mm < QG_MAX_M; mm++)
        if (mm == m && u < units) amax[mm] = fmaxf(amax[mm], a);
    });
    const float a = qg_block_rows<true>(amax, scratch, M);
    if (tid < M) xscale[tid] = fmaxf(__fdiv_rn(a, PGN_E4M3_MAX), minScale);
  } else if (tid < M) {
    xscale[tid] = *inputScale;
  }
  __syncthreads();
  qg_for_x_units<QB>(x, K, kUnits, units, [&](int u, int m, const uint4& raw) {
    if (u < units) {
      Pack<T> p;
      p.raw = raw;
      const float r = __frcp_rn(xscale[m]);
      const unsigned q0 = qg_e4m3x2(p.get(0) * r, p.get(1) * r) | (qg_e4m3x2(p.get(2) * r, p.get(3) * r) << 16);
      const unsigned q1 = qg_e4m3x2(p.get(4) * r, p.get(5) * r) | (qg_e4m3x2(p.get(6) * r, p.get(7) * r) << 16);
      *reinterpret_cast<uint2*>(xsm + m * xStride + (u - m * kUnits) * 8) = make_uint2(q0, q1);
    }
  });
}

// Prologues of the dense kind (what the block stages as x): QG_PRO_COPY x itself; QG_PRO_SILU x = gateUp [M, 2K]
// (gate | up), staged as silu(gate) * up rounded to T as silu_mul (elementwise.cu) rounds it; QG_PRO_RMSNORM x =
// the residual stream [M, K], staged as rms_norm (norm.cu) writes its output: x * rsqrt(mean(x^2) + eps) * (w +
// weightOffset) (the sum of squares reduced in another order: at most an ulp of the inverse apart).
// accumulate (epilogue, any prologue): out [M, N] (T) += the result rounded to T, as a separate add of the
// rounded linear output would do it (the residual add of o_proj / down_proj).
#define QG_PRO_COPY 0
#define QG_PRO_SILU 1
#define QG_PRO_RMSNORM 2
struct QgDense {
  const void* normWeight = nullptr;  // QG_PRO_RMSNORM: [K] in T
  float eps = 0.f, weightOffset = 0.f;
  int accumulate = 0;
};

// v rounded to the dtype of outKind (1 bf16, 2 f16; 0 f32 as is) and back
__device__ __forceinline__ float qg_round(float v, int outKind) {
  if (outKind == 1) return __bfloat162float(__float2bfloat16_rn(v));
  if (outKind == 2) return __half2float(__float2half_rn(v));
  return v;
}

// One step of a lane into acc: weights lo / hi (rows g, g + 8); int formats' scales and zero points sz (x, y: rows
// g and g + 8's scales; z, w: their zeros when hasZeros, else 8); x at xp[i] + xoff (see qg_x_ptrs).
template <int KIND, typename T>
__device__ __forceinline__ void qg_step(float (&acc)[4], const uint4& lo, const uint4& hi, const float4& sz, bool hasZeros,
                                        const unsigned char* const* xp, int xoff) {
  if (KIND == PGN_Q_DENSE) {
    qg_step_dense<T>(acc, lo, hi, xp[0] + xoff);
  } else if (KIND == PGN_Q_FP8) {
    qg_step64<KIND, T>(acc, lo, hi, xp[0] + xoff);
  } else {
    float part[4] = {0.f, 0.f, 0.f, 0.f};
    if (KIND == PGN_Q_INT8) {
      qg_step64<KIND, T>(part, lo, hi, xp[0] + xoff);
    } else {
      const float zLo = hasZeros ? sz.z : 8.f, zHi = hasZeros ? sz.w : 8.f;
      const unsigned zl = pack2<T>(QgMagic<T>::VALUE + zLo, QgMagic<T>::VALUE + zLo), zh = pack2<T>(QgMagic<T>::VALUE + zHi, QgMagic<T>::VALUE + zHi);
      qg_step_int4<T>(part, lo, hi, xp, xoff, zl, zh);
    }
    acc[0] = fmaf(part[0], sz.x, acc[0]);
    acc[1] = fmaf(part[1], sz.x, acc[1]);
    acc[2] = fmaf(part[2], sz.y, acc[2]);
    acc[3] = fmaf(part[3], sz.y, acc[3]);
  }
}

// x as the plain (QG_PRO_COPY) kinds stage it: int8 copied in the activation dtype, int4 too but each unit of 8
// values as pairs (0,4), (1,5), (2,6), (3,7) and swizzled (qg_step_int4), fp8 copied from xq with its scales xs,
// or quantized here from x. Every thread; the copies are one cp.async group the caller waits for (then a
// barrier, which the int4 stores need too).
template <int KIND, typename T, bool XQ>
__device__ __forceinline__ void qg_stage_x(unsigned char* xsm, int xStride, float* xscale, float* scratch, const T* x, const unsigned char* xq,
                                           const float* xs, const float* inputScale, int M, int K, float minScale) {
  const int tid = threadIdx.x;
  if (KIND == PGN_Q_INT4) {
    const int kUnits = K >> 3;
    qg_for_x_units<4>(x, K, kUnits, M * kUnits, [&](int u, int m, const uint4& v) {
      if (u < M * kUnits) {
        const uint4 p = make_uint4(__byte_perm(v.x, v.z, 0x5410), __byte_perm(v.x, v.z, 0x7632), __byte_perm(v.y, v.w, 0x5410), __byte_perm(v.y, v.w, 0x7632));
        *reinterpret_cast<uint4*>(xsm + m * xStride + qg_swz(u - m * kUnits) * 16) = p;
      }
    });
  } else if (KIND != PGN_Q_FP8) {
    const int kUnits = K >> 3;
    for (int u = tid; u < M * kUnits; u += blockDim.x) {
      const int m = u / kUnits, c = u - m * kUnits;
      qg_cp16(xsm + m * xStride + c * 16, x + (long long)m * K + c * 8, true);
    }
  } else if (XQ) {
    const int kUnits = K >> 4;
    for (int u = tid; u < M * kUnits; u += blockDim.x) {
      const int m = u / kUnits, c = u - m * kUnits;
      qg_cp16(xsm + m * xStride + c * 16, xq + (long long)m * K + c * 16, true);
    }
    if (tid < M) xscale[tid] = xs[tid];
  }
  qg_commit();
  if (KIND == PGN_Q_FP8 && !XQ) qg_quantize_x<T>(xsm, xStride, xscale, scratch, x, inputScale, M, K, minScale);
}

// Where lane (g, t) of `warp` reads x for its first step (xp; int4: one pointer per word, swizzled), its token's
// row or the zero slot for tokens >= M; returns the bytes between the warp's steps (0 for the zero slot).
template <int KIND>
__device__ __forceinline__ int qg_x_ptrs(const unsigned char* (&xp)[4], const unsigned char* xsm, int xStride, const void* zero16, int M, int warp) {
  constexpr bool WIDE = KIND == PGN_Q_FP8 || KIND == PGN_Q_DENSE;  // 16 bytes of x a lane and step
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const bool hasX = g < M;
  const unsigned char* z16 = reinterpret_cast<const unsigned char*>(zero16);
  const unsigned char* xrow = xsm + g * xStride;
  if (KIND == PGN_Q_INT4) {
    const int sw = t & 2;  // qg_swz of unit 16 step + 4t + i is 16 step + 4t + (i ^ sw)
#pragma unroll
    for (int i = 0; i < 4; i++) xp[i] = hasX ? xrow + warp * 256 + t * 64 + (i ^ sw) * 16 : z16;
  } else {
    xp[0] = hasX ? xrow + warp * (WIDE ? 64 : 128) + t * (WIDE ? 16 : 32) : z16;
  }
  return hasX ? (KIND == PGN_Q_INT4 ? 256 : WIDE ? 64 : 128) * QG_WARPS : 0;
}

// The end of a tile: the warps' partial sums acc meet in red ([WARPS][16][8], this tile's buffer: the caller
// alternates two when a block takes several tiles), then threads < 16 M write out row tile * 16 + (tid & 15) of
// token tid >> 4: fp8 scaled by the token's and the weight's scales, + bias; dense with `accumulate` added to out.
template <int KIND>
__device__ __forceinline__ void qg_tile_out(float* red, const float (&acc)[4], void* out, int tile, int M, int N, const float* xscale,
                                            const float* scales, int wsPerTensor, const void* bias, int biasKind, int outKind, int accumulate) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  // C fragment: acc0,1 = (row g, tokens 2t, 2t+1), acc2,3 = (row g+8, same) -> red[warp][row][token]
  float* r = red + warp * 128;
  r[g * 8 + 2 * t] = acc[0];
  r[g * 8 + 2 * t + 1] = acc[1];
  r[(g + 8) * 8 + 2 * t] = acc[2];
  r[(g + 8) * 8 + 2 * t + 1] = acc[3];
  __syncthreads();
  if (tid < 16 * M) {
    const int m = tid >> 4, row = tid & 15, n = tile * 16 + row;
    if (n < N) {
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < QG_WARPS; w++) s += red[w * 128 + row * 8 + m];
      if (KIND == PGN_Q_FP8) s *= xscale[m] * scales[wsPerTensor ? 0 : n];
      const long long o = (long long)m * N + n;
      s += q_bias(bias, n, biasKind);
      if (KIND == PGN_Q_DENSE && accumulate) s = q_load(out, o, outKind) + qg_round(s, outKind);
      q_store(out, o, s, outKind);
    }
  }
}

template <int KIND, typename T, bool XQ, int PRO = QG_PRO_COPY, int S = QG_STAGES>
__device__ void qgemv(void* out, const T* x, const unsigned char* xq, const float* xs, const float* inputScale, const unsigned char* qw,
                      const float* scales, const float* zeros, const void* bias, int M, int N, int K, int groupShift, int wsPerTensor,
                      int outKind, int biasKind, float minScale, QgDense dn = QgDense()) {
  constexpr bool FP8 = KIND == PGN_Q_FP8, DENSE = KIND == PGN_Q_DENSE;
  constexpr bool SCALED = !FP8 && !DENSE;  // int formats: group scales (and zeros) ride in the ring
  constexpr int STEP_K = KIND == PGN_Q_INT4 ? 128 : DENSE ? 32 : 64;
  extern __shared__ __align__(16) unsigned char qg_smem[];
  uint4* ringW = reinterpret_cast<uint4*>(qg_smem);                              // [WARPS][S][2][32]
  float* ringS = reinterpret_cast<float*>(qg_smem + QG_WARPS * S * QG_RING_W);    // [WARPS][S][8 quads][4] (int formats)
  float* red = reinterpret_cast<float*>(qg_smem + QG_WARPS * S * (QG_RING_W + (SCALED ? QG_RING_S : 0)));  // [2][WARPS][16][8]
  float* xscale = red + 2 * QG_WARPS * 128;                                      // [QG_MAX_M] (fp8)
  uint4* zero16 = reinterpret_cast<uint4*>(xscale + QG_MAX_M);                  // 32 zero bytes: x of tokens >= M
  unsigned char* xsm = reinterpret_cast<unsigned char*>(zero16 + 2);              // [M][xStride]
  const int xStride = qg_x_stride<KIND>(K);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  const int rowBytes = KIND == PGN_Q_INT4 ? K >> 1 : DENSE ? 2 * K : K;
  const int numSteps = K / STEP_K;
  // warp w takes steps w, w + 8, ...: at any time the block streams 512 contiguous bytes of each row
  const int cnt = numSteps > warp ? (numSteps - warp + QG_WARPS - 1) / QG_WARPS : 0;
  const int numTiles = (N + 15) >> 4;
  const int numG = groupShift < 0 ? 1 : (numSteps + (1 << groupShift) - 1) >> groupShift;  // groups of 2^groupShift steps
  const unsigned char* const myW = reinterpret_cast<const unsigned char*>(ringW + warp * S * 64 + lane);  // slot 0: rows g, g + 8 512 bytes apart
  const float* const myS = ringS + warp * S * 32;                                                       // slot 0 of the quads' scales
  constexpr int LAST_SLOT = (S - 1) * QG_RING_W;  // byte offset of the ring's last slot (scales: / 8)

  // the copy side of the ring: item (tile, step) in the order the warp computes them. w0 / w1 point at the next
  // item's bytes (advanced a step at a time), sp at this lane's scale / zero row of the tile (see above; its
  // validity sv; when not valid, row 0 of scales, so that sp + group stays a real address), issOff at the
  // item's slot (byte offset in the lane's ring).
  int issTile = blockIdx.x, issI = 0, issOff = 0;
  bool v0 = false, v1 = false;
  const unsigned char *w0 = qw, *w1 = qw;
  const float* sp = scales;
  bool sv = false;
  const int gShift = groupShift < 0 ? 31 : groupShift;  // one group a row: (step >> 31) = 0
  const unsigned issW = smem_u32(myW), issS = smem_u32(myS + lane);
  auto rowsOf = [&](int tile) {
    const int r0 = tile * 16 + g, r1 = r0 + 8;
    v0 = r0 < N;
    v1 = r1 < N;
    const long long c0 = v0 ? r0 : 0, c1 = v1 ? r1 : 0;
    w0 = qw + c0 * rowBytes + warp * 64 + t * 16;
    w1 = qw + c1 * rowBytes + warp * 64 + t * 16;
    if (SCALED) {
      const long long c = t & 1 ? c1 : c0;
      const bool zero = t >= 2;
      sv = (t & 1 ? v1 : v0) && (!zero || zeros != nullptr);
      sp = (zero && zeros != nullptr ? zeros : scales) + (sv ? c * numG : 0);
    }
  };
  rowsOf(issTile);
  auto issue = [&]() {
    if (cnt > 0 && issTile < numTiles) {
      qg_cp16(issW + issOff, w0, v0);
      qg_cp16(issW + issOff + 512, w1, v1);
      if (SCALED) qg_cp4(issS + (issOff >> 3), sp + ((warp + issI * QG_WARPS) >> gShift), sv);
      w0 += QG_WARPS * 64;
      w1 += QG_WARPS * 64;
      if (++issI == cnt) {
        issI = 0;
        issTile += gridDim.x;
        if (issTile < numTiles) rowsOf(issTile);
      }
    }
    qg_commit();  // empty groups past the end keep the count uniform
    issOff = issOff == LAST_SLOT ? 0 : issOff + QG_RING_W;
  };

  // the ring's first S - 1 steps: weights only, so before PGN_PDL_WAIT (under PDL they stream while the
  // previous kernel finishes); then x's copies (int formats, quantized fp8) form the last group
  for (int p = 0; p < S - 1; p++) issue();
  PGN_PDL_WAIT();
  if (tid < 2) zero16[tid] = make_uint4(0u, 0u, 0u, 0u);
  static_assert(PRO == QG_PRO_COPY || DENSE, "prologues are for dense weights");
  if (PRO == QG_PRO_RMSNORM) {
    // the raw rows in as the copy path brings them (every cp.async in flight at once), then each row's sum of
    // squares from shared memory, then the rows normalized in place (norm weights QB loads at a time)
    constexpr int QB = 4;
    const int kUnits = K >> 3, units = M * kUnits;
    for (int u = tid; u < units; u += blockDim.x) {
      const int m = u / kUnits, c = u - m * kUnits;
      qg_cp16(xsm + m * xStride + c * 16, x + (long long)m * K + c * 8, true);
    }
    qg_commit();
    qg_wait<0>();
    __syncthreads();
    float ss[QG_MAX_M];
#pragma unroll
    for (int m = 0; m < QG_MAX_M; m++) ss[m] = 0.f;
    for (int u = tid; u < units; u += blockDim.x) {
      const int m = u / kUnits, c = u - m * kUnits;
      Pack<T> v;
      v.raw = *reinterpret_cast<const uint4*>(xsm + m * xStride + c * 16);
      float a = 0.f;
#pragma unroll
      for (int e = 0; e < Pack<T>::N; e++) a += v.get(e) * v.get(e);
#pragma unroll
      for (int mm = 0; mm < QG_MAX_M; mm++)
        if (mm == m) ss[mm] += a;
    }
    const float a = qg_block_rows<false>(ss, red, M);
    if (tid < M) xscale[tid] = rsqrtf(a / K + dn.eps);
    __syncthreads();
    const T* nw = static_cast<const T*>(dn.normWeight);
    for (int u0 = tid; u0 < units; u0 += blockDim.x * QB) {
      uint4 wv[QB];
#pragma unroll
      for (int b = 0; b < QB; b++) {
        const int u = u0 + b * blockDim.x;
        wv[b] = u < units ? __ldg(reinterpret_cast<const uint4*>(nw + (u % kUnits) * 8)) : make_uint4(0u, 0u, 0u, 0u);
      }
#pragma unroll
      for (int b = 0; b < QB; b++) {
        const int u = u0 + b * blockDim.x;
        if (u >= units) continue;
        const int m = u / kUnits, c = u - m * kUnits;
        uint4* slot = reinterpret_cast<uint4*>(xsm + m * xStride + c * 16);
        Pack<T> v, w, r;
        v.raw = *slot;
        w.raw = wv[b];
        const float inv = xscale[m];
#pragma unroll
        for (int e = 0; e < Pack<T>::N; e++) r.set(e, v.get(e) * inv * (w.get(e) + dn.weightOffset));
        *slot = r.raw;
      }
    }
  } else if (PRO == QG_PRO_SILU) {
    // gate and up QB units at a time (all their loads in flight), silu(gate) * up staged as T
    constexpr int QB = 4;
    const int kUnits = K >> 3, units = M * kUnits;
    for (int u0 = tid; u0 < units; u0 += blockDim.x * QB) {
      uint4 gv[QB], uv[QB];
#pragma unroll
      for (int b = 0; b < QB; b++) {
        const int u = u0 + b * blockDim.x, m = u / kUnits, c = u - m * kUnits;
        const T* row = x + (long long)m * 2 * K + c * 8;
        gv[b] = u < units ? __ldg(reinterpret_cast<const uint4*>(row)) : make_uint4(0u, 0u, 0u, 0u);
        uv[b] = u < units ? __ldg(reinterpret_cast<const uint4*>(row + K)) : make_uint4(0u, 0u, 0u, 0u);
      }
#pragma unroll
      for (int b = 0; b < QB; b++) {
        const int u = u0 + b * blockDim.x;
        if (u >= units) continue;
        const int m = u / kUnits, c = u - m * kUnits;
        Pack<T> gate, up, r;
        gate.raw = gv[b];
        up.raw = uv[b];
#pragma unroll
        for (int e = 0; e < Pack<T>::N; e++) r.set(e, silu_f(gate.get(e)) * up.get(e));
        *reinterpret_cast<uint4*>(xsm + m * xStride + c * 16) = r.raw;
      }
    }
  } else {
    qg_stage_x<KIND, T, XQ>(xsm, xStride, xscale, red, x, xq, xs, inputScale, M, K, minScale);
  }
  if (PRO != QG_PRO_COPY) qg_commit();
  qg_wait<0>();  // this thread's x copies (and the ring's first steps, loaded by now)
  __syncthreads();

  // where this lane reads x: its token's row (or the zero slot), advanced per step
  const unsigned char* xp[4];
  const int xStep = qg_x_ptrs<KIND>(xp, xsm, xStride, zero16, M, warp);
  int rdOff = 0, par = 0;  // the slot computed next (byte offset, as issOff)
  for (int tile = blockIdx.x; tile < numTiles; tile += gridDim.x) {
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    for (int i = 0; i < cnt; i++) {
      if (SCALED) {
        // a step's scales and zeros are read by the other lanes of the quad that copied them: each lane waits for
        // its own copies of this step, then __syncwarp makes them visible to the quad (and orders the quad's
        // reads of the slot the next copy refills, last step's, before that copy)
        qg_wait<S - 2>();
        __syncwarp();
        issue();
      } else {
        issue();
        qg_wait<S - 1>();
      }
      const uint4 lo = *reinterpret_cast<const uint4*>(myW + rdOff), hi = *reinterpret_cast<const uint4*>(myW + rdOff + 512);
      const float4 sz = SCALED ? *reinterpret_cast<const float4*>(myS + g * 4 + (rdOff >> 5)) : make_float4(0.f, 0.f, 0.f, 0.f);
      qg_step<KIND, T>(acc, lo, hi, sz, zeros != nullptr, xp, i * xStep);
      rdOff = rdOff == LAST_SLOT ? 0 : rdOff + QG_RING_W;
    }
    // the next tile writes the other buffer; the one after waits at the barrier inside this one's qg_tile_out
    qg_tile_out<KIND>(red + par * QG_WARPS * 128, acc, out, tile, M, N, xscale, scales, wsPerTensor, bias, biasKind, outKind, dn.accumulate);
    par ^= 1;
  }
  qg_wait<0>();
}

// qgemv_<kind>_<dtype>(out, x, xq, xs, inputScale, qw, scales, zeros, bias, M, N, K, groupShift, wsPerTensor, outKind,
// biasKind, minScale); qgemv_fp8q reads x already quantized (xq [M, K] E4M3, xs [M]) and no x. groupShift: int
// formats' group = 2^groupShift steps, or -1 for one group a row (per channel).
#define PGN_QGEMV_ARGS                                                                                                  \
  void *out, const void *x, const unsigned char *xq, const float *xs, const float *inputScale, const unsigned char *qw, \
      const float *scales, const float *zeros, const void *bias, int M, int N, int K, int groupShift, int wsPerTensor,   \
      int outKind, int biasKind, float minScale
#define PGN_QGEMV_PASS(T) \
  out, static_cast<const T*>(x), xq, xs, inputScale, qw, scales, zeros, bias, M, N, K, groupShift, wsPerTensor, outKind, biasKind, minScale
// one kernel: qgemv_<NAME>, weights KIND, activations T (XQ: x handed over in E4M3), a ring of STAGES steps
#define PGN_QGEMV_ONE(NAME, KIND, T, XQ, STAGES)                                                                       \
  extern "C" __global__ void __launch_bounds__(QG_WARPS * 32, QG_MIN_BLOCKS) qgemv_##NAME(PGN_QGEMV_ARGS) {           \
    qgemv<KIND, T, XQ, QG_PRO_COPY, STAGES>(PGN_QGEMV_PASS(T));                                                        \
    PGN_PDL_TRIGGER();                                                                                                 \
  }
// _s10: fp8 with a ring of 10 steps, for long rows (cuda-quant-gemv.ts qgemvStages: K >= 8192, where 28 steps a warp
// left the 6-step ring's warps waiting on memory).
#define PGN_QGEMV(T, S)                                                                                                \
  PGN_QGEMV_ONE(fp8_##S, PGN_Q_FP8, T, false, QG_STAGES) PGN_QGEMV_ONE(int8_##S, PGN_Q_INT8, T, false, QG_STAGES)      \
  PGN_QGEMV_ONE(int4_##S, PGN_Q_INT4, T, false, QG_STAGES) PGN_QGEMV_ONE(fp8_##S##_s10, PGN_Q_FP8, T, false, 10)
PGN_HALF_TYPES(PGN_QGEMV)
PGN_QGEMV_ONE(fp8q, PGN_Q_FP8, bf16, true, QG_STAGES)
PGN_QGEMV_ONE(fp8q_s10, PGN_Q_FP8, bf16, true, 10)
// qgemv_dense_<copy|silu|norm>_<dtype>(out, x, w, bias, normWeight, M, N, K, outKind, biasKind, eps, weightOffset,
// accumulate): bf16 / f16 weights (cuda-gemv.ts ring GEMV), x staged by the prologue named (see QG_PRO_*).
#define PGN_QGEMV_DENSE_ARGS(T)                                                                                   \
  void *out, const T *x, const unsigned char *w, const void *bias, const void *normWeight, int M, int N, int K, \
      int outKind, int biasKind, float eps, float weightOffset, int accumulate
#define PGN_QGEMV_DENSE_PASS(T) \
  out, x, nullptr, nullptr, nullptr, w, nullptr, nullptr, bias, M, N, K, -1, 0, outKind, biasKind, 0.f, QgDense{normWeight, eps, weightOffset, accumulate}
#define PGN_QGEMV_DENSE_ONE(T, S, NAME, PRO)                                                                                         \
  extern "C" __global__ void __launch_bounds__(QG_WARPS * 32, QG_MIN_BLOCKS) qgemv_dense_##NAME##_##S(PGN_QGEMV_DENSE_ARGS(T)) { \
    qgemv<PGN_Q_DENSE, T, false, PRO>(PGN_QGEMV_DENSE_PASS(T));                                                                    \
    PGN_PDL_TRIGGER();                                                                                                             \
  }
#define PGN_QGEMV_DENSE(T, S) \
  PGN_QGEMV_DENSE_ONE(T, S, copy, QG_PRO_COPY) PGN_QGEMV_DENSE_ONE(T, S, silu, QG_PRO_SILU) PGN_QGEMV_DENSE_ONE(T, S, norm, QG_PRO_RMSNORM)
PGN_HALF_TYPES(PGN_QGEMV_DENSE)
