// Elementwise and row-movement kernels: add, relu, gelu, scale, softcap, clamp, gated
// activations (act(gate) * up),
// row gathers (embedding, embeddingShard, gatherRows) and the f32 bias add that follows a cuBLASLt GEMM
// whose epilogue cannot take the bias' dtype; fill_uniform fills tensors with random values.
//
// `vec` = 1 when every pointer is 16-byte aligned and the row width is a multiple of the
// pack size: then each thread moves 16 bytes at a time. Grids are grid-stride loops.
#include "common.cuh"

struct AddOp { __device__ __forceinline__ float operator()(float a, float b) const { return a + b; } };
struct ReluOp { __device__ __forceinline__ float operator()(float x) const { return x > 0.f ? x : 0.f; } };
struct GeluOp {
  int tanhApprox;
  __device__ __forceinline__ float operator()(float x) const { return tanhApprox ? gelu_tanh_f(x) : gelu_erf_f(x); }
};
struct SiluOp { __device__ __forceinline__ float operator()(float x) const { return silu_f(x); } };
struct ScaleOp {
  float factor;
  __device__ __forceinline__ float operator()(float x) const { return x * factor; }
};
struct SoftcapOp {
  float cap;
  __device__ __forceinline__ float operator()(float x) const { return cap * tanhf(x / cap); }
};
struct ClampOp {
  float lo, hi;
  __device__ __forceinline__ float operator()(float x) const { return fminf(fmaxf(x, lo), hi); }
};

template <typename T, typename Op>
__device__ __forceinline__ void binary_op(T* out, const T* a, const T* b, long long n, int vec, Op op) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (vec) {
    constexpr int N = Pack<T>::N;
    for (; i < n / N; i += stride) {
      Pack<T> x = load_pack(a + i * N), y = load_pack(b + i * N), r;
#pragma unroll
      for (int e = 0; e < N; e++) r.set(e, op(x.get(e), y.get(e)));
      store_pack(out + i * N, r);
    }
  } else {
    for (; i < n; i += stride) out[i] = from_f32<T>(op(to_f32(a[i]), to_f32(b[i])));
  }
}

template <typename T, typename Op>
__device__ __forceinline__ void unary_op(T* out, const T* x, long long n, int vec, Op op) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (vec) {
    constexpr int N = Pack<T>::N;
    for (; i < n / N; i += stride) {
      Pack<T> v = load_pack(x + i * N), r;
#pragma unroll
      for (int e = 0; e < N; e++) r.set(e, op(v.get(e)));
      store_pack(out + i * N, r);
    }
  } else {
    for (; i < n; i += stride) out[i] = from_f32<T>(op(to_f32(x[i])));
  }
}

// out [T, I] = act(gateUp[:, :I]) * gateUp[:, I:]
template <typename T, typename Op>
__device__ __forceinline__ void gated_op(T* out, const T* gateUp, long long numTokens, int I, int vec, Op act) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (vec) {
    constexpr int N = Pack<T>::N;
    const int packsPerRow = I / N;
    const long long numPacks = numTokens * packsPerRow;
    for (; i < numPacks; i += stride) {
      const long long t = i / packsPerRow;
      const int c = (int)(i - t * packsPerRow) * N;
      const T* row = gateUp + t * 2 * I;
      Pack<T> g = load_pack(row + c), u = load_pack(row + I + c), r;
#pragma unroll
      for (int e = 0; e < N; e++) r.set(e, act(g.get(e)) * u.get(e));
      store_pack(out + t * I + c, r);
    }
  } else {
    const long long n = numTokens * I;
    for (; i < n; i += stride) {
      const long long t = i / I;
      const int c = (int)(i - t * I);
      const T* row = gateUp + t * 2 * I;
      out[i] = from_f32<T>(act(to_f32(row[c])) * to_f32(row[I + c]));
    }
  }
}

// out [R, H] = src[index[r] - indexOffset]; one block per output row (blocks stride rows).
// Rows whose index falls outside src (0..numSrcRows-1 after the offset) are zero-filled: with
// indexOffset = a rank's first vocab row, this is the lookup of a vocab-parallel embedding.
template <typename T>
__device__ __forceinline__ void gather_rows(T* out, const T* src, const int* index, int numRows, int H, int numSrcRows, int vec, int indexOffset) {
  for (int r = blockIdx.x; r < numRows; r += gridDim.x) {
    const int s = index[r] - indexOffset;
    const bool ok = s >= 0 && s < numSrcRows;
    T* o = out + (long long)r * H;
    const T* in = src + (long long)(ok ? s : 0) * H;
    if (vec) {
      constexpr int N = Pack<T>::N;
      for (int c = threadIdx.x * N; c < H; c += blockDim.x * N) {
        Pack<T> v;
        if (ok) v = load_pack(in + c);
        else v.raw = make_uint4(0, 0, 0, 0);
        store_pack(o + c, v);
      }
    } else {
      for (int c = threadIdx.x; c < H; c += blockDim.x) o[c] = ok ? in[c] : from_f32<T>(0.f);
    }
  }
}

// A uniform [0, 1) number from (index, seed): splitmix64 of both. For benchmarks and tests.
__device__ __forceinline__ float hash_uniform(unsigned long long i, unsigned seed) {
  unsigned long long z = i * 0x9e3779b97f4a7c15ull + ((unsigned long long)seed << 32 | seed);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (float)(z >> 40) * (1.f / 16777216.f);
}

#define PGN_ELEMENTWISE(T, S)                                                                                  \
  extern "C" __global__ void add_##S(T* out, const T* a, const T* b, long long n, int vec) {                  \
    PGN_PDL_WAIT();                                                                                             \
    binary_op(out, a, b, n, vec, AddOp());                                                                      \
    PGN_PDL_TRIGGER();                                                                                          \
  }                                                                                                             \
  extern "C" __global__ void relu_##S(T* out, const T* x, long long n, int vec) { PGN_PDL_WAIT(); unary_op(out, x, n, vec, ReluOp()); PGN_PDL_TRIGGER(); } \
  extern "C" __global__ void gelu_##S(T* out, const T* x, long long n, int vec, int tanhApprox) {              \
    PGN_PDL_WAIT();                                                                                             \
    unary_op(out, x, n, vec, GeluOp{tanhApprox});                                                               \
    PGN_PDL_TRIGGER();                                                                                          \
  }                                                                                                             \
  extern "C" __global__ void scale_##S(T* out, const T* x, long long n, int vec, float factor) {               \
    PGN_PDL_WAIT();                                                                                             \
    unary_op(out, x, n, vec, ScaleOp{factor});                                                                  \
    PGN_PDL_TRIGGER();                                                                                          \
  }                                                                                                             \
  extern "C" __global__ void softcap_##S(T* out, const T* x, long long n, int vec, float cap) {                \
    PGN_PDL_WAIT();                                                                                             \
    unary_op(out, x, n, vec, SoftcapOp{cap});                                                                   \
    PGN_PDL_TRIGGER();                                                                                          \
  }                                                                                                             \
  extern "C" __global__ void clamp_##S(T* out, const T* x, long long n, int vec, float lo, float hi) {         \
    PGN_PDL_WAIT();                                                                                             \
    unary_op(out, x, n, vec, ClampOp{lo, hi});                                                                  \
    PGN_PDL_TRIGGER();                                                                                          \
  }                                                                                                             \
  extern "C" __global__ void silu_mul_##S(T* out, const T* gateUp, long long numTokens, int I, int vec) {      \
    PGN_PDL_WAIT();                                                                                             \
    gated_op(out, gateUp, numTokens, I, vec, SiluOp());                                                         \
    PGN_PDL_TRIGGER();                                                                                          \
  }                                                                                                             \
  extern "C" __global__ void gelu_mul_##S(T* out, const T* gateUp, long long numTokens, int I, int vec, int tanhApprox) { \
    PGN_PDL_WAIT();                                                                                             \
    gated_op(out, gateUp, numTokens, I, vec, GeluOp{tanhApprox});                                               \
    PGN_PDL_TRIGGER();                                                                                          \
  }                                                                                                             \
  extern "C" __global__ void gather_rows_##S(T* out, const T* src, const int* index, int numRows, int H, int numSrcRows, int vec, int indexOffset) { \
    PGN_PDL_WAIT();                                                                                             \
    gather_rows(out, src, index, numRows, H, numSrcRows, vec, indexOffset);                                     \
    PGN_PDL_TRIGGER();                                                                                          \
  }                                                                                                             \
  extern "C" __global__ void fill_uniform_##S(T* out, long long n, unsigned seed, float scale) {               \
    PGN_PDL_WAIT();                                                                                             \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) \
      out[i] = from_f32<T>(scale * (2.f * hash_uniform((unsigned long long)i, seed) - 1.f));                   \
    PGN_PDL_TRIGGER();                                                                                          \
  }                                                                                                             \
  extern "C" __global__ void bias_add_f32_##S(float* out, const T* bias, long long numTokens, int N) {         \
    PGN_PDL_WAIT();                                                                                             \
    const long long n = numTokens * N;                                                                          \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) \
      out[i] += to_f32(bias[i % N]);                                                                            \
    PGN_PDL_TRIGGER();                                                                                          \
  }

PGN_FLOAT_TYPES(PGN_ELEMENTWISE)
