// Mixture of experts, first version: correct, simple, memory-bound GEMVs (each (token, expert)
// pair reads its expert's rows; no reuse across tokens, so prefill is slow; grouped GEMMs later).
//
// moe_route:   grid numTokens, one warp: softmax over routerLogits [T, E] (f32), topK largest
//              (ties: lower expert id first), optional renormalisation; topkIds i32 / topkWeights f32 [T, topK].
//              Dynamic shared memory: E floats.
// moe_gate_up: grid (T * topK, ceil(I / 4)), 4 warps, a warp per intermediate row i:
//              act[t, k, i] = silu(gate_e[i] . x[t]) * (up_e[i] . x[t]), gateUp [E, 2I, H].
// moe_down:    grid (T, ceil(H / 4)), a warp per output h:
//              out[t, h] = sum_k w[t, k] * (down_e[h] . act[t, k]), down [E, H, I].
// Expert ids outside 0..E-1 contribute nothing.
#include "common.cuh"

__device__ void moe_route(int* topkIds, float* topkWeights, const float* logits, int E, int topK, int renormalize) {
  extern __shared__ float probs[];
  const int t = blockIdx.x, lane = threadIdx.x;
  const float* row = logits + (long long)t * E;
  float mx = PGN_NEG_INF;
  for (int e = lane; e < E; e += 32) mx = fmaxf(mx, row[e]);
  mx = warp_max(mx);
  float sum = 0.f;
  for (int e = lane; e < E; e += 32) { const float p = expf(row[e] - mx); probs[e] = p; sum += p; }
  sum = warp_sum(sum);
  __syncwarp();
  float chosen = 0.f;
  for (int k = 0; k < topK; k++) {
    float bv = -1.f;
    int bi = 0x7fffffff;
    for (int e = lane; e < E; e += 32) {
      const float v = probs[e];
      if (v > bv || (v == bv && e < bi)) { bv = v; bi = e; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
    }
    if (lane == 0) {
      topkIds[t * topK + k] = bi;
      topkWeights[t * topK + k] = bv / sum;
      probs[bi] = -1.f;  // taken
    }
    chosen += bv / sum;
    __syncwarp();
  }
  if (renormalize) {
    for (int k = lane; k < topK; k += 32) topkWeights[t * topK + k] /= chosen;
  }
}

template <typename T>
__device__ __forceinline__ float warp_dot(const T* a, const T* x, int n) {
  float s = 0.f;
  for (int i = threadIdx.x & 31; i < n; i += 32) s += to_f32(a[i]) * to_f32(x[i]);
  return warp_sum(s);
}

template <typename T>
__device__ __forceinline__ float warp_dot_f32(const T* a, const float* x, int n) {
  float s = 0.f;
  for (int i = threadIdx.x & 31; i < n; i += 32) s += to_f32(a[i]) * x[i];
  return warp_sum(s);
}

template <typename T>
__device__ void moe_gate_up(float* act, const T* x, const T* gateUp, const int* topkIds, int topK, int H, int I, int E) {
  const int i = blockIdx.y * 4 + (threadIdx.x >> 5);
  const int tk = blockIdx.x, t = tk / topK;
  if (i >= I) return;
  const int e = topkIds[tk];
  float a = 0.f;
  if (e >= 0 && e < E) {
    const T* xr = x + (long long)t * H;
    const T* g = gateUp + ((long long)e * 2 * I + i) * H;
    const float gate = warp_dot(g, xr, H);
    const float up = warp_dot(g + (long long)I * H, xr, H);
    a = silu_f(gate) * up;
  }
  if ((threadIdx.x & 31) == 0) act[(long long)tk * I + i] = a;
}

template <typename T>
__device__ void moe_down(T* out, const float* act, const T* down, const int* topkIds, const float* topkWeights, int topK,
                         int H, int I, int E) {
  const int h = blockIdx.y * 4 + (threadIdx.x >> 5);
  const int t = blockIdx.x;
  if (h >= H) return;
  float s = 0.f;
  for (int k = 0; k < topK; k++) {
    const int e = topkIds[t * topK + k];
    if (e < 0 || e >= E) continue;
    s += topkWeights[t * topK + k] * warp_dot_f32(down + ((long long)e * H + h) * I, act + ((long long)t * topK + k) * I, I);
  }
  if ((threadIdx.x & 31) == 0) out[(long long)t * H + h] = from_f32<T>(s);
}

#define PGN_MOE(T, S)                                                                                            \
  extern "C" __global__ void moe_gate_up_##S(float* act, const T* x, const T* gateUp, const int* topkIds,       \
                                             int topK, int H, int I, int E) {                                   \
    PGN_PDL_WAIT();                                                                                              \
    moe_gate_up<T>(act, x, gateUp, topkIds, topK, H, I, E);                                                      \
    PGN_PDL_TRIGGER();                                                                                           \
  }                                                                                                              \
  extern "C" __global__ void moe_down_##S(T* out, const float* act, const T* down, const int* topkIds,          \
                                          const float* topkWeights, int topK, int H, int I, int E) {            \
    PGN_PDL_WAIT();                                                                                              \
    moe_down<T>(out, act, down, topkIds, topkWeights, topK, H, I, E);                                            \
    PGN_PDL_TRIGGER();                                                                                           \
  }

extern "C" __global__ void moe_route_f32(int* topkIds, float* topkWeights, const float* logits, int E, int topK, int renormalize) {
  PGN_PDL_WAIT();
  moe_route(topkIds, topkWeights, logits, E, topK, renormalize);
  PGN_PDL_TRIGGER();
}
PGN_FLOAT_TYPES(PGN_MOE)
