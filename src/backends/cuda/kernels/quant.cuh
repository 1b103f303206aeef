// Shared by the quantized-weight kernels (quant.cu, quant_gemv.cu, the fused norm in norm.cu): format
// codes, output / bias dtype helpers, E4M3 encode / decode (as src/weights/quant/fp8.ts), block max, and the
// FP8 tensor-core mma. Output dtype (outKind): 0 f32, 1 bf16, 2 f16. Bias dtype (biasKind): 0 none, 1 f32,
// 2 bf16, 3 f16.
#pragma once
#include "common.cuh"

#define PGN_E4M3_MAX 448.f
#define PGN_Q_FP8 0
#define PGN_Q_INT8 1
#define PGN_Q_INT4 2
// not quantized: weights in the activation dtype (quant_gemv.cu's ring-buffered GEMV for bf16 / f16 linears)
#define PGN_Q_DENSE 3
// 2^23: an integer 0..255 OR-ed into this float's mantissa is read back exactly by subtracting it
#define PGN_MAGIC_2P23 8388608.f

__device__ __forceinline__ void q_store(void* out, long long i, float v, int outKind) {
  if (outKind == 0) static_cast<float*>(out)[i] = v;
  else if (outKind == 1) static_cast<bf16*>(out)[i] = __float2bfloat16_rn(v);
  else static_cast<f16*>(out)[i] = __float2half_rn(v);
}

__device__ __forceinline__ float q_load(const void* p, long long i, int outKind) {
  if (outKind == 0) return static_cast<const float*>(p)[i];
  if (outKind == 1) return __bfloat162float(static_cast<const bf16*>(p)[i]);
  return __half2float(static_cast<const f16*>(p)[i]);
}

__device__ __forceinline__ float q_bias(const void* bias, int n, int biasKind) {
  if (biasKind == 0) return 0.f;
  return q_load(bias, n, biasKind - 1);
}

// f32 -> E4M3 (OCP e4m3fn) byte: round to nearest even, saturating to +-448, NaN -> NaN (fp8.ts encodeE4M3).
__device__ __forceinline__ unsigned e4m3_encode(float x) {
  const unsigned u = __float_as_uint(x);
  const unsigned sign = (u >> 24) & 0x80u;
  const unsigned a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7fu;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  // the hardware conversion rounds and saturates alike (to nearest even, +-448 for anything larger, subnormals)
  unsigned short pair;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(0.f), "f"(x));
  return pair & 0xffu;
#endif
  if (a >= 0x43e00000u) return sign | 0x7eu;                       // >= 448
  if (a < 0x3c800000u) return sign | (unsigned)__float2int_rn(__uint_as_float(a) * 512.f);  // subnormal: m * 2^-9
  const unsigned r = (a + 0x7ffffu + ((a >> 20) & 1u)) >> 20;      // keep 3 mantissa bits, ties to even
  return sign | (r - (120u << 3));                                 // f32 bias 127 -> E4M3 bias 7
}

// E4M3 byte -> f32, exactly: exponent and mantissa moved into an f32 (a denormal for E4M3 subnormals) and
// rebiased by 2^120. (0x7f, NaN, decodes as 480: never produced by the encoder from finite input.)
__device__ __forceinline__ float e4m3_decode(unsigned b) {
  const float mag = __uint_as_float((b & 0x7fu) << 20) * 0x1p120f;
  return (b & 0x80u) ? -mag : mag;
}

// 16 bytes of codes -> their values in T at dst (16-byte aligned), each computed in f32 and rounded once: fp8
// 16 values e4m3 * scale, int8 16 values q * scale, int4 32 values (q - zero) * scale (value v is byte v, or
// nibble v, of the little-endian words). The dequantizing kernels' unit (quant.cu quant_dequant16,
// quant_igemm.cu's w tile).
template <typename T>
__device__ __forceinline__ void q_dequant16(T* dst, const uint4& codes, int kind, float scale, float zero) {
  const unsigned words[4] = {codes.x, codes.y, codes.z, codes.w};
  if (kind == PGN_Q_INT4) {
#pragma unroll
    for (int q = 0; q < 4; q++) {
      Pack<T> pk;
#pragma unroll
      for (int j = 0; j < 8; j++) pk.set(j, ((float)((words[q] >> (4 * j)) & 0xfu) - zero) * scale);
      *reinterpret_cast<uint4*>(dst + 8 * q) = pk.raw;
    }
  } else {
#pragma unroll
    for (int h = 0; h < 2; h++) {
      Pack<T> pk;
#pragma unroll
      for (int j = 0; j < 8; j++) {
        const unsigned b = (words[2 * h + j / 4] >> (8 * (j % 4))) & 0xffu;
        pk.set(j, (kind == PGN_Q_FP8 ? e4m3_decode(b) : (float)(signed char)b) * scale);
      }
      *reinterpret_cast<uint4*>(dst + 8 * h) = pk.raw;
    }
  }
}

__device__ __forceinline__ float q_block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int numWarps = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < numWarps ? scratch[lane] : 0.f;
  return warp_max(v);
}

__device__ __forceinline__ void mma_e4m3(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
  __trap();  // the host dispatches here only on sm_89+
#endif
}

__device__ __forceinline__ uint4 q_ld16(const unsigned char* p, bool valid) {
  return valid ? __ldg(reinterpret_cast<const uint4*>(p)) : make_uint4(0, 0, 0, 0);
}
