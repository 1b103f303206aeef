// RMSNorm and LayerNorm over rows of H, each with the fused residual add:
//   hasResidual: residual = T(residual + x) (in place), then out = norm(residual)
//   else:        out = norm(x)
// One block per row; statistics in f32. `out` may alias `x` (each thread reads its
// elements before it writes them). `vec` = 1 when H is a multiple of the pack size.
#include "common.cuh"

// Pass 1: the normalised source row (residual sum stored back when fused); returns it via `src`.
template <typename T, bool Vec>
__device__ __forceinline__ float residual_pass(const T* x, T* residual, int H, const T** src, bool wantSumSq) {
  float acc = 0.f;
  if (residual) {
    *src = residual;
    if (Vec) {
      constexpr int N = Pack<T>::N;
      for (int c = threadIdx.x * N; c < H; c += blockDim.x * N) {
        Pack<T> a = load_pack(x + c), r = load_pack(residual + c);
#pragma unroll
        for (int e = 0; e < N; e++) r.set(e, a.get(e) + r.get(e));
        store_pack(residual + c, r);
#pragma unroll
        for (int e = 0; e < N; e++) { const float v = r.get(e); acc += wantSumSq ? v * v : v; }
      }
    } else {
      for (int c = threadIdx.x; c < H; c += blockDim.x) {
        const T r = from_f32<T>(to_f32(x[c]) + to_f32(residual[c]));
        residual[c] = r;
        const float v = to_f32(r);
        acc += wantSumSq ? v * v : v;
      }
    }
  } else {
    *src = x;
    if (Vec) {
      constexpr int N = Pack<T>::N;
      for (int c = threadIdx.x * N; c < H; c += blockDim.x * N) {
        Pack<T> a = load_pack(x + c);
#pragma unroll
        for (int e = 0; e < N; e++) { const float v = a.get(e); acc += wantSumSq ? v * v : v; }
      }
    } else {
      for (int c = threadIdx.x; c < H; c += blockDim.x) { const float v = to_f32(x[c]); acc += wantSumSq ? v * v : v; }
    }
  }
  return acc;
}

template <typename T, bool Vec>
__device__ void rms_norm_row(T* out, const T* x, T* residual, const T* weight, float eps, float weightOffset, int H) {
  __shared__ float scratch[32];
  const T* src;
  const float sumSq = block_sum(residual_pass<T, Vec>(x, residual, H, &src, true), scratch);
  const float inv = rsqrtf(sumSq / H + eps);
  if (Vec) {
    constexpr int N = Pack<T>::N;
    for (int c = threadIdx.x * N; c < H; c += blockDim.x * N) {
      Pack<T> v = load_pack(src + c), w = load_pack(weight + c), r;
#pragma unroll
      for (int e = 0; e < N; e++) r.set(e, v.get(e) * inv * (w.get(e) + weightOffset));
      store_pack(out + c, r);
    }
  } else {
    for (int c = threadIdx.x; c < H; c += blockDim.x) out[c] = from_f32<T>(to_f32(src[c]) * inv * (to_f32(weight[c]) + weightOffset));
  }
}

template <typename T, bool Vec>
__device__ void layer_norm_row(T* out, const T* x, T* residual, const T* weight, const T* bias, float eps, int H) {
  __shared__ float scratch[32];
  const T* src;
  const float mean = block_sum(residual_pass<T, Vec>(x, residual, H, &src, false), scratch) / H;
  float acc = 0.f;
  for (int c = threadIdx.x; c < H; c += blockDim.x) { const float d = to_f32(src[c]) - mean; acc += d * d; }
  const float inv = rsqrtf(block_sum(acc, scratch) / H + eps);
  if (Vec) {
    constexpr int N = Pack<T>::N;
    for (int c = threadIdx.x * N; c < H; c += blockDim.x * N) {
      Pack<T> v = load_pack(src + c), w = load_pack(weight + c), r;
      Pack<T> b;
      if (bias) b = load_pack(bias + c);
#pragma unroll
      for (int e = 0; e < N; e++) r.set(e, (v.get(e) - mean) * inv * w.get(e) + (bias ? b.get(e) : 0.f));
      store_pack(out + c, r);
    }
  } else {
    for (int c = threadIdx.x; c < H; c += blockDim.x) {
      const float b = bias ? to_f32(bias[c]) : 0.f;
      out[c] = from_f32<T>((to_f32(src[c]) - mean) * inv * to_f32(weight[c]) + b);
    }
  }
}

#define PGN_NORM(T, S)                                                                                          \
  extern "C" __global__ void rms_norm_##S(T* out, const T* x, T* residual, const T* weight, float eps,        \
                                          float weightOffset, int H, int vec) {                                \
    PGN_PDL_WAIT();                                                                                             \
    const long long r = blockIdx.x;                                                                             \
    T* res = residual ? residual + r * H : nullptr;                                                             \
    if (vec) rms_norm_row<T, true>(out + r * H, x + r * H, res, weight, eps, weightOffset, H);                  \
    else rms_norm_row<T, false>(out + r * H, x + r * H, res, weight, eps, weightOffset, H);                     \
    PGN_PDL_TRIGGER();                                                                                          \
  }                                                                                                             \
  extern "C" __global__ void layer_norm_##S(T* out, const T* x, T* residual, const T* weight, const T* bias,  \
                                            float eps, int H, int vec) {                                       \
    PGN_PDL_WAIT();                                                                                             \
    const long long r = blockIdx.x;                                                                             \
    T* res = residual ? residual + r * H : nullptr;                                                             \
    if (vec) layer_norm_row<T, true>(out + r * H, x + r * H, res, weight, bias, eps, H);                        \
    else layer_norm_row<T, false>(out + r * H, x + r * H, res, weight, bias, eps, H);                           \
    PGN_PDL_TRIGGER();                                                                                          \
  }

// qkRmsNorm: in place over each q and k head of qkv rows (Qwen3 q_norm / k_norm), v untouched.
// Grid (numTokens, numHeads + numKvHeads), one warp per head.
template <typename T>
__device__ void qk_rms_norm(T* qkv, const T* qWeight, const T* kWeight, float eps, float weightOffset, int numHeads,
                            int numKvHeads, int D) {
  const int head = blockIdx.y;
  T* x = qkv + (long long)blockIdx.x * (numHeads + 2 * numKvHeads) * D + head * D;
  const T* w = head < numHeads ? qWeight : kWeight;
  float sumSq = 0.f;
  for (int d = threadIdx.x; d < D; d += 32) { const float v = to_f32(x[d]); sumSq += v * v; }
  const float inv = rsqrtf(warp_sum(sumSq) / D + eps);
  for (int d = threadIdx.x; d < D; d += 32) x[d] = from_f32<T>(to_f32(x[d]) * inv * (to_f32(w[d]) + weightOffset));
}

#define PGN_QK_NORM(T, S)                                                                                       \
  extern "C" __global__ void qk_rms_norm_##S(T* qkv, const T* qWeight, const T* kWeight, float eps,            \
                                             float weightOffset, int numHeads, int numKvHeads, int D) {        \
    PGN_PDL_WAIT();                                                                                             \
    qk_rms_norm<T>(qkv, qWeight, kWeight, eps, weightOffset, numHeads, numKvHeads, D);                          \
    PGN_PDL_TRIGGER();                                                                                          \
  }

PGN_FLOAT_TYPES(PGN_NORM)
PGN_FLOAT_TYPES(PGN_QK_NORM)

// ---- RMSNorm fused with FP8 activation quantization (issue 6) ----------------------------------------------
// rms_norm_fp8: rms_norm's vector path (the same thread mapping and reductions, so `out` and the residual come
// out bit-identical to rms_norm with the same blockDim) that also quantizes its output to E4M3 for the FP8
// linear reading it: xq [rows, H] bytes and xs [rows], the static *inputScale or max(rowAmax / 448, minScale)
// of the out values, exactly as quant_fp8_act / quant_fp8_rows would from `out`. H % 8 == 0, 16-byte
// aligned rows. One block per row. `out` may be null (the linear reads only xq): the codes are the same.
#include "quant.cuh"

// KEEP: packs of a row a thread keeps in registers between the amax pass and the quantization (further packs, in
// rows wider than KEEP * blockDim * 8, are computed again from their inputs). More kept packs cost registers, and
// blocks an SM: rms_norm_fp8 keeps 2 (its thread count is rms_norm's). silu_mul_fp8 keeps 2 in up to 1024 threads
// a row, for few rows; silu_mul_fp8_k8 8 in up to 256, for many, so that 3-4 blocks an SM overlap one another's
// load and quantization phases (H200, 2026-11-28: batch 1024 1.15 ms a step against 1.40, 8192-token prefill 8.56
// vs 10.79 ms; but 1 row 9.4 us against ~5, 128 rows 22 us a call: few long blocks).

// The pieces every FP8 row producer below shares: a pack's |max| folded into amax, a pack's E4M3 codes at scale s
// stored at dst (8 bytes), and SiLU(gate) * up of the pack at column c of a [gate | up] row of width I.
template <typename T> __device__ __forceinline__ float fp8_pack_amax(float amax, const Pack<T>& r) {
#pragma unroll
  for (int e = 0; e < Pack<T>::N; e++) amax = fmaxf(amax, fabsf(r.get(e)));
  return amax;
}
template <typename T> __device__ __forceinline__ void fp8_store_pack(unsigned char* dst, const Pack<T>& r, float s) {
  unsigned q[2] = {0u, 0u};
#pragma unroll
  for (int e = 0; e < Pack<T>::N; e++) q[e >> 2] |= e4m3_encode(__fdiv_rn(r.get(e), s)) << (8 * (e & 3));
  *reinterpret_cast<uint2*>(dst) = make_uint2(q[0], q[1]);
}
template <typename T> __device__ __forceinline__ Pack<T> silu_mul_pack(const T* gateUp, int I, int c) {
  Pack<T> g = load_pack(gateUp + c), u = load_pack(gateUp + I + c), r;
#pragma unroll
  for (int e = 0; e < Pack<T>::N; e++) r.set(e, silu_f(g.get(e)) * u.get(e));
  return r;
}

// One row producer fused with its E4M3 quantization: value(c) is the producer's pack at column c (the same
// bits each call); it is stored to `out` (when not null), its amax reduced over the block, then the row's scale
// (the static *inputScale, or max(rowAmax / 448, minScale)) and the codes of the same values, as quant_fp8_act /
// quant_fp8_rows would quantize `out`. The values stay in registers: `out` is never read back.
template <typename T, int KEEP, typename Value>
__device__ __forceinline__ void fp8_row(Value value, T* out, unsigned char* xq, float* xs, int H, float* scratch,
                                        const float* inputScale, float minScale) {
  constexpr int N = Pack<T>::N;
  const int step = blockDim.x * N;
  Pack<T> keep[KEEP];
  float amax = 0.f;
#pragma unroll
  for (int p = 0; p < KEEP; p++) {
    const int c = threadIdx.x * N + p * step;
    if (c < H) {
      keep[p] = value(c);
      if (out) store_pack(out + c, keep[p]);
      amax = fp8_pack_amax(amax, keep[p]);
    }
  }
  for (int c = threadIdx.x * N + KEEP * step; c < H; c += step) {
    const Pack<T> r = value(c);
    if (out) store_pack(out + c, r);
    amax = fp8_pack_amax(amax, r);
  }
  float s;
  if (inputScale != nullptr) s = *inputScale;
  else s = fmaxf(__fdiv_rn(q_block_max(amax, scratch), PGN_E4M3_MAX), minScale);
  if (threadIdx.x == 0) *xs = s;
#pragma unroll
  for (int p = 0; p < KEEP; p++) {
    const int c = threadIdx.x * N + p * step;
    if (c < H) fp8_store_pack(xq + c, keep[p], s);
  }
  for (int c = threadIdx.x * N + KEEP * step; c < H; c += step) fp8_store_pack(xq + c, value(c), s);
}

template <typename T>
__device__ void rms_norm_fp8_row(T* out, unsigned char* xq, float* xs, const T* x, T* residual, const T* weight, float eps,
                                 float weightOffset, int H, const float* inputScale, float minScale) {
  __shared__ float scratch[32];
  const T* src;
  const float sumSq = block_sum(residual_pass<T, true>(x, residual, H, &src, true), scratch);
  const float inv = rsqrtf(sumSq / H + eps);
  auto value = [&](int c) {
    Pack<T> v = load_pack(src + c), w = load_pack(weight + c), r;
#pragma unroll
    for (int e = 0; e < Pack<T>::N; e++) r.set(e, v.get(e) * inv * (w.get(e) + weightOffset));
    return r;
  };
  fp8_row<T, 2>(value, out, xq, xs, H, scratch, inputScale, minScale);
}

// silu_mul_fp8: silu_mul (elementwise.cu) of one row, out bit-identical to it, and that row quantized to E4M3 for
// the FP8 down_proj reading it, as rms_norm_fp8 quantizes. I % 8 == 0, 16-byte aligned rows. One block per row,
// any block size (elementwise values, and the amax does not depend on the order); `out` may be null.
template <typename T, int KEEP>
__device__ void silu_mul_fp8_row(T* out, unsigned char* xq, float* xs, const T* gateUp, int I, const float* inputScale, float minScale) {
  __shared__ float scratch[32];
  fp8_row<T, KEEP>([&](int c) { return silu_mul_pack(gateUp, I, c); }, out, xq, xs, I, scratch, inputScale, minScale);
}

// silu_mul_fp8<SUFFIX>_<dtype>: KEEP packs kept a thread, launch bounds BOUNDS
#define PGN_SILU_FP8(T, S, SUFFIX, KEEP, BOUNDS)                                                                       \
  extern "C" __global__ void __launch_bounds__ BOUNDS silu_mul_fp8##SUFFIX##_##S(                                      \
      T* out, unsigned char* xq, float* xs, const T* gateUp, int I, const float* inputScale, float minScale) {         \
    PGN_PDL_WAIT();                                                                                                    \
    const long long r = blockIdx.x;                                                                                    \
    silu_mul_fp8_row<T, KEEP>(out ? out + r * I : nullptr, xq + r * I, xs + r, gateUp + r * 2 * I, I, inputScale,      \
                              minScale);                                                                               \
    PGN_PDL_TRIGGER();                                                                                                 \
  }
// silu_mul_fp8_cl: the same row split over a cluster of SILU_CLUSTER blocks (sm_90+), for few rows, where one
// block a row leaves most SMs idle (1 row: ~5 us a call on one SM). Block `rank` of the cluster takes columns
// [rank * span, (rank + 1) * span) of row blockIdx.x / SILU_CLUSTER, keeps one pack a thread (further packs are
// computed again), and the row's amax is the max of the blocks' amaxes read through distributed shared memory;
// codes and scales are those of silu_mul_fp8 (a max does not depend on the order), `out` bit for bit the same.
#define SILU_CLUSTER 8
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ unsigned cluster_rank() {
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
// every thread of every block of the cluster arrives, then waits (release / acquire: shared-memory writes before are seen after)
__device__ __forceinline__ void cluster_sync() { asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory"); }
// the f32 at `p` (this block's shared memory) in block `rank` of the cluster
__device__ __forceinline__ float cluster_load(const float* p, unsigned rank) {
  unsigned a;
  float v;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(a) : "r"((unsigned)__cvta_generic_to_shared(p)), "r"(rank));
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(a) : "memory");
  return v;
}
#endif
template <typename T>
__device__ void silu_mul_fp8_cluster_row(T* out, unsigned char* xq, float* xs, const T* gateUp, int I, const float* inputScale, float minScale) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int N = Pack<T>::N;
  __shared__ float scratch[32];
  __shared__ float blockAmax;
  const int rank = (int)cluster_rank();
  const long long r = blockIdx.x / SILU_CLUSTER;
  const int span = (I / N + SILU_CLUSTER - 1) / SILU_CLUSTER * N;
  const int c0 = rank * span, c1 = min(I, c0 + span), step = blockDim.x * N;
  const T* g = gateUp + r * 2 * I;
  T* o = out ? out + r * I : nullptr;
  const int cKeep = c0 + threadIdx.x * N;
  Pack<T> keep;
  float amax = 0.f;
  for (int c = cKeep; c < c1; c += step) {
    const Pack<T> v = silu_mul_pack(g, I, c);
    if (c == cKeep) keep = v;
    if (o) store_pack(o + c, v);
    amax = fp8_pack_amax(amax, v);
  }
  float s;
  if (inputScale != nullptr) {
    s = *inputScale;
  } else {
    const float b = q_block_max(amax, scratch);
    if (threadIdx.x == 0) blockAmax = b;
    cluster_sync();
    float m = 0.f;
#pragma unroll
    for (int k = 0; k < SILU_CLUSTER; k++) m = fmaxf(m, cluster_load(&blockAmax, k));
    cluster_sync();  // no block leaves while another reads its blockAmax
    s = fmaxf(__fdiv_rn(m, PGN_E4M3_MAX), minScale);
  }
  if (rank == 0 && threadIdx.x == 0) xs[r] = s;
  for (int c = cKeep; c < c1; c += step) fp8_store_pack(xq + r * I + c, c == cKeep ? keep : silu_mul_pack(g, I, c), s);
#else
  __trap();  // the host launches it on sm_90+ only
#endif
}
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define PGN_SILU_CLUSTER_DIMS
#else
#define PGN_SILU_CLUSTER_DIMS __cluster_dims__(SILU_CLUSTER, 1, 1)
#endif
// silu_mul_fp8_cl_<dtype>: grid SILU_CLUSTER blocks a row
#define PGN_SILU_FP8_CL(T, S)                                                                                          \
  extern "C" __global__ void __launch_bounds__(1024) PGN_SILU_CLUSTER_DIMS silu_mul_fp8_cl_##S(                       \
      T* out, unsigned char* xq, float* xs, const T* gateUp, int I, const float* inputScale, float minScale) {         \
    PGN_PDL_WAIT();                                                                                                    \
    silu_mul_fp8_cluster_row<T>(out, xq, xs, gateUp, I, inputScale, minScale);                                         \
    PGN_PDL_TRIGGER();                                                                                                 \
  }
PGN_HALF_TYPES(PGN_SILU_FP8_CL)

#define PGN_NORM_FP8(T, S)                                                                                             \
  extern "C" __global__ void __launch_bounds__(1024)                                                                   \
      rms_norm_fp8_##S(T* out, unsigned char* xq, float* xs, const T* x, T* residual, const T* weight, float eps,      \
                       float weightOffset, int H, const float* inputScale, float minScale) {                           \
    PGN_PDL_WAIT();                                                                                                    \
    const long long r = blockIdx.x;                                                                                    \
    rms_norm_fp8_row<T>(out ? out + r * H : nullptr, xq + r * H, xs + r, x + r * H,                                    \
                        residual ? residual + r * H : nullptr, weight, eps, weightOffset, H, inputScale, minScale);    \
    PGN_PDL_TRIGGER();                                                                                                 \
  }                                                                                                                    \
  PGN_SILU_FP8(T, S, , 2, (1024)) PGN_SILU_FP8(T, S, _k8, 8, (256, 3))
PGN_HALF_TYPES(PGN_NORM_FP8)
