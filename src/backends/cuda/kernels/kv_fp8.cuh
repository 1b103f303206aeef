// The FP8 (E4M3, OCP e4m3fn) KV cache: codes of f32(x / scale) written by ropeWriteKv, read by the
// attention kernels, which fold the per-tensor scales into their math (K's into the query, V's into
// the output) and so convert codes exactly: E4M3 -> f16 loses nothing, and f16 -> f32 / bf16 neither.
// Cache rows are bytes: element e of slot s at byte s * numKvHeads * D + e.
#pragma once
#include "quant.cuh"  // e4m3_encode

// The cache element type of the fp8 kernels.
typedef unsigned char kv_fp8_t;

// Two E4M3 codes (low byte first) -> f16x2, exactly.
__device__ __forceinline__ __half2 kv_e4m3x2_to_half2(unsigned short codes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  unsigned r;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(r) : "h"(codes));
  return *reinterpret_cast<__half2*>(&r);
#else
  // the E4M3 bits moved into f16's fields read as value * 2^-8 (bias 15 vs 7; subnormals alike)
  const unsigned c = codes;
  const unsigned bits = ((c & 0x7fu) << 7) | ((c & 0x80u) << 8) | ((c & 0x7f00u) << 15) | ((c & 0x8000u) << 16);
  return __hmul2(*reinterpret_cast<const __half2*>(&bits), __float2half2_rn(256.f));
#endif
}

// 8 codes (one 8-byte load) -> 8 floats.
__device__ __forceinline__ void kv_fp8x8_to_f32(uint2 raw, float* f) {
  const unsigned w[2] = {raw.x, raw.y};
#pragma unroll
  for (int i = 0; i < 2; i++) {
    const float2 lo = __half22float2(kv_e4m3x2_to_half2((unsigned short)(w[i] & 0xffffu)));
    const float2 hi = __half22float2(kv_e4m3x2_to_half2((unsigned short)(w[i] >> 16)));
    f[4 * i] = lo.x; f[4 * i + 1] = lo.y; f[4 * i + 2] = hi.x; f[4 * i + 3] = hi.y;
  }
}

// One code -> float (the generic kernel's scalar reads).
__device__ __forceinline__ float kv_fp8_to_f32(kv_fp8_t code) {
  return __low2float(kv_e4m3x2_to_half2(code));
}

// Cache element -> float: T as it is, fp8 codes unscaled (the caller applies the scale).
__device__ __forceinline__ float kv_to_f32(kv_fp8_t x) { return kv_fp8_to_f32(x); }
__device__ __forceinline__ float kv_to_f32(float x) { return x; }
__device__ __forceinline__ float kv_to_f32(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float kv_to_f32(f16 x) { return __half2float(x); }

// float -> cache element: T rounded, fp8 as code(x / scale).
template <typename C> __device__ __forceinline__ C kv_from_f32(float x, float scale);
template <> __device__ __forceinline__ kv_fp8_t kv_from_f32<kv_fp8_t>(float x, float scale) { return (kv_fp8_t)e4m3_encode(__fdiv_rn(x, scale)); }
template <> __device__ __forceinline__ float kv_from_f32<float>(float x, float) { return x; }
template <> __device__ __forceinline__ bf16 kv_from_f32<bf16>(float x, float) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ f16 kv_from_f32<f16>(float x, float) { return __float2half_rn(x); }

// 8 codes -> 8 elements of T packed in 16 bytes (exact: the prefill kernel's K/V tiles).
template <typename T> __device__ __forceinline__ uint4 kv_fp8x8_to_pack(uint2 raw);
template <> __device__ __forceinline__ uint4 kv_fp8x8_to_pack<f16>(uint2 raw) {
  __half2 h[4] = {kv_e4m3x2_to_half2((unsigned short)(raw.x & 0xffffu)), kv_e4m3x2_to_half2((unsigned short)(raw.x >> 16)),
                  kv_e4m3x2_to_half2((unsigned short)(raw.y & 0xffffu)), kv_e4m3x2_to_half2((unsigned short)(raw.y >> 16))};
  return *reinterpret_cast<uint4*>(h);
}
template <> __device__ __forceinline__ uint4 kv_fp8x8_to_pack<bf16>(uint2 raw) {
  float f[8];
  kv_fp8x8_to_f32(raw, f);
  __nv_bfloat162 b[4] = {__floats2bfloat162_rn(f[0], f[1]), __floats2bfloat162_rn(f[2], f[3]),
                         __floats2bfloat162_rn(f[4], f[5]), __floats2bfloat162_rn(f[6], f[7])};
  return *reinterpret_cast<uint4*>(b);
}

// 8 bytes global -> shared, bypassing nothing (cp.async.cg takes only 16); `valid` false zero-fills.
__device__ __forceinline__ void kv_cp_async8(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"((unsigned)__cvta_generic_to_shared(smem)), "l"(gmem), "r"(valid ? 8 : 0));
}
