// Shared helpers for Peregrine's kernels: storage types, f32 conversion, 16-byte packs,
// warp/block reductions. Every kernel file includes this; the build compiles all of them
// as one translation unit (nvcc or NVRTC), so nothing here may rely on host headers.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>

typedef __nv_bfloat16 bf16;
typedef __half f16;

#define PGN_LOG2E 1.4426950408889634f
#define PGN_NEG_INF (-__int_as_float(0x7f800000))

// Programmatic dependent launch (sm_90+; module.ts launches with it unless PEREGRINE_PDL=0): a kernel
// may be scheduled while the previous one runs. PGN_PDL_WAIT(), early in every kernel, blocks until the
// previous grid has completed and its writes are visible: before it a kernel may only read what no
// earlier kernel of the step writes (the decode GEMVs load their first weights there). It then lets the
// next kernel be scheduled at once, so that one's pre-wait loads overlap this kernel's work. (Letting it
// be scheduled before the wait, so whole chains launch early, was measured slower: H100, 8B FP8 batch 1
// 4.57-4.61 against 4.01-4.06 ms, 2026-11-28.)
// PGN_PDL_TRIGGER() (kept at the end of older kernels) is then a repeat, which changes nothing; a block
// that exits without either triggers then. Both are no-ops for a launch without the attribute, and
// compile to nothing below sm_90 (module.ts enables PDL only on sm_90+).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define PGN_PDL_WAIT() asm volatile("griddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;" ::: "memory")
#define PGN_PDL_TRIGGER() asm volatile("griddepcontrol.launch_dependents;")
#else
#define PGN_PDL_WAIT() ((void)0)
#define PGN_PDL_TRIGGER() ((void)0)
#endif

// Stamps X(type, suffix) for each storage dtype an op supports.
#define PGN_FLOAT_TYPES(X) X(float, f32) X(bf16, bf16) X(f16, f16)
#define PGN_HALF_TYPES(X) X(bf16, bf16) X(f16, f16)

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(f16 x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ f16 from_f32<f16>(float x) { return __float2half_rn(x); }

// A 16-byte pack of N = 16 / sizeof(T) elements, moved with one vector load/store.
template <typename T> struct Pack {
  static constexpr int N = 16 / sizeof(T);
  uint4 raw;
  __device__ __forceinline__ float get(int i) const { return to_f32(reinterpret_cast<const T*>(&raw)[i]); }
  __device__ __forceinline__ void set(int i, float v) { reinterpret_cast<T*>(&raw)[i] = from_f32<T>(v); }
};

template <typename T> __device__ __forceinline__ Pack<T> load_pack(const T* p) {
  Pack<T> r;
  r.raw = *reinterpret_cast<const uint4*>(p);
  return r;
}
template <typename T> __device__ __forceinline__ void store_pack(T* p, const Pack<T>& v) {
  *reinterpret_cast<uint4*>(p) = v.raw;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int numWarps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < numWarps ? scratch[lane] : 0.f;
  return warp_sum(v);
}

// 2^x with the hardware approximation (flushes results below 2^-126 to 0): softmax weights.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float silu_f(float x) { return x / (1.f + __expf(-x)); }
__device__ __forceinline__ float gelu_erf_f(float x) { return 0.5f * x * (1.f + erff(x * 0.7071067811865476f)); }
__device__ __forceinline__ float gelu_tanh_f(float x) {
  const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return 0.5f * x * (1.f + tanhf(u));
}
