// One-shot all-reduce for small messages between the GPUs of one host (tensor parallelism,
// src/parallel/custom-allreduce.ts). Each rank's process maps its peers' receive buffers and
// signal blocks with CUDA IPC; one kernel per all-reduce, "push" style:
//   1. block b stores its packs of the input into slot `rank` of every rank's receive buffer
//      (remote stores over NVLink: one-way, no round trip),
//   2. meets block b of every peer at a flag barrier (release our stores, acquire theirs),
//   3. sums its packs over the slots of its own receive buffer, local memory, in rank order with
//      f32 accumulation (every rank computes the same bits: replicated activations stay identical).
// Receive buffers are double-buffered by call parity, so no second barrier is needed: a peer can
// run at most one call ahead (its next barrier waits for ours), and that call writes the other half.
// Every call runs the same grid, so block b's flag (its count of calls) is the call index on every
// rank and block; the flags live in device memory and the kernel bumps them itself, so a captured
// CUDA graph replays it as is. A peer that never arrives: the host sets the abort word and the wait
// gives up (the result is then undefined, as NCCL's after ncclCommAbort); past PGN_AR_TIMEOUT_NS
// without abort the kernel traps, so the step fails rather than hangs.
// Design after vLLM's csrc/custom_all_reduce.cuh (flag barriers per block) and TensorRT-LLM's
// one-shot push kernels.
#include "common.cuh"

#define PGN_AR_MAX_RANKS 8
#define PGN_AR_MAX_BLOCKS 64
#define PGN_AR_THREADS 512
#define PGN_AR_TIMEOUT_NS 120000000000ull
#define PGN_AR_SPINS_PER_CHECK 2048

// One per rank, zeroed before first use. Keep in step with SIGNAL_* in custom-allreduce.ts.
struct PgnArSignal {
  unsigned int start[PGN_AR_MAX_BLOCKS][PGN_AR_MAX_RANKS];  // start[b][r]: rank r's block b reached call `flag`
  unsigned int counter[PGN_AR_MAX_BLOCKS];                  // calls block b has completed
  unsigned int abort;                                       // nonzero: every wait gives up
};

// This process's view of every rank's buffers (own ones included), in device memory. A receive
// buffer is [2 parities][numRanks slots][slotPacks 16-byte packs].
struct PgnArTable {
  uint4* recv[PGN_AR_MAX_RANKS];
  PgnArSignal* signal[PGN_AR_MAX_RANKS];
};

__device__ __forceinline__ void ar_store_release(unsigned int* p, unsigned int v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ unsigned int ar_load_acquire(const unsigned int* p) {
  unsigned int v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ unsigned int ar_load_volatile(const unsigned int* p) {
  unsigned int v;
  asm volatile("ld.volatile.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ unsigned long long ar_now_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Spins until *slot has reached `flag` (flags only grow, modulo 2^32); false when the host aborted first.
__device__ __forceinline__ bool ar_wait(const unsigned int* slot, unsigned int flag, const unsigned int* abortWord) {
  unsigned long long t0 = 0;
  unsigned int spins = 0;
  while ((int)(ar_load_acquire(slot) - flag) < 0) {
    if (++spins % PGN_AR_SPINS_PER_CHECK != 0) continue;
    if (ar_load_volatile(abortWord) != 0) return false;
    const unsigned long long now = ar_now_ns();
    if (t0 == 0) t0 = now;
    else if (now - t0 > PGN_AR_TIMEOUT_NS) __trap();
  }
  return true;
}

template <typename T, int N>
__device__ __forceinline__ void custom_allreduce_body(T* out, const T* in, const PgnArTable* table, long long numPacks, long long slotPacks, int rank) {
  __shared__ uint4* recv[N];
  __shared__ PgnArSignal* signal[N];
  __shared__ int aborted;
  const int tid = threadIdx.x, b = blockIdx.x;
  if (tid < N) {
    recv[tid] = table->recv[tid];
    signal[tid] = table->signal[tid];
  }
  if (tid == 0) aborted = 0;
  __syncthreads();
  PgnArSignal* self = signal[rank];
  const unsigned int flag = self->counter[b] + 1;
  const long long half = (long long)(flag & 1) * N * slotPacks;  // this call's half of every receive buffer
  const long long stride = (long long)gridDim.x * blockDim.x;
  const long long first = (long long)b * blockDim.x + tid;

  const uint4* src = reinterpret_cast<const uint4*>(in);
  for (long long i = first; i < numPacks; i += stride) {
    const uint4 v = __ldcg(src + i);
#pragma unroll
    for (int r = 0; r < N; r++) __stcg(recv[r] + half + rank * slotPacks + i, v);
  }
  __syncthreads();
  if (tid < N) {
    ar_store_release(&signal[tid]->start[b][rank], flag);
    if (!ar_wait(&self->start[b][tid], flag, &self->abort)) aborted = 1;
  }
  __syncthreads();
  if (tid == 0) self->counter[b] = flag;
  if (aborted) return;

  const uint4* mine = recv[rank] + half;
  for (long long i = first; i < numPacks; i += stride) {
    float acc[Pack<T>::N];
#pragma unroll
    for (int k = 0; k < Pack<T>::N; k++) acc[k] = 0.f;
#pragma unroll
    for (int r = 0; r < N; r++) {
      Pack<T> p;
      p.raw = __ldcg(mine + r * slotPacks + i);
#pragma unroll
      for (int k = 0; k < Pack<T>::N; k++) acc[k] += p.get(k);
    }
    Pack<T> o;
#pragma unroll
    for (int k = 0; k < Pack<T>::N; k++) o.set(k, acc[k]);
    reinterpret_cast<uint4*>(out)[i] = o.raw;
  }
}

// custom_allreduce_<dtype>_n<ranks>(out, in, table, numPacks, slotPacks, rank): numPacks 16-byte
// packs; every call of a group launches the same grid.
#define PGN_AR_KERNEL(T, S, N)                                                                                  \
  extern "C" __global__ void __launch_bounds__(PGN_AR_THREADS) custom_allreduce_##S##_n##N(                    \
      T* out, const T* in, const PgnArTable* table, long long numPacks, long long slotPacks, int rank) {       \
    PGN_PDL_WAIT();                                                                                             \
    custom_allreduce_body<T, N>(out, in, table, numPacks, slotPacks, rank);                                     \
    PGN_PDL_TRIGGER();                                                                                          \
  }
#define PGN_AR_KERNELS(T, S) \
  PGN_AR_KERNEL(T, S, 2) PGN_AR_KERNEL(T, S, 3) PGN_AR_KERNEL(T, S, 4) PGN_AR_KERNEL(T, S, 5) PGN_AR_KERNEL(T, S, 6) PGN_AR_KERNEL(T, S, 7) PGN_AR_KERNEL(T, S, 8)
PGN_FLOAT_TYPES(PGN_AR_KERNELS)
