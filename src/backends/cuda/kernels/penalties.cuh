// Token-history logits processors of one row, before temperature/top-k/top-p (vLLM's order,
// as src/sampling/logits-processors.ts): the min_tokens mask, then the repetition penalty over
// prompt + output tokens, then presence/frequency penalties over output tokens.
// The host (sample-params.ts) packs each row's list: `numMasked` ids to set to -inf (eos and
// stop ids while the output is shorter than min_tokens), then `numPenalized` (id, count) pairs,
// one per distinct id (count = occurrences in the output; 0 for prompt-only ids). Ids outside
// the row are ignored, as on the CPU. Async scheduling: `pendingId` (>= 0) is one more output
// token, sampled by the step in flight and read on the device, that the pairs do not count yet:
// its pair's count goes up by one, or, absent from the pairs, it is penalized as seen once. The arithmetic is the CPU's: f64 ops on the f32 logit,
// rounded once to f32; explicit _rn intrinsics keep nvcc from fusing them into an FMA.
#pragma once
#include "common.cuh"

namespace pgn_penalties {

struct HistoryParams {
  const int* entries;  // [numMasked ids (each followed by an unused word)][numPenalized (id, count)]
  int numMasked;
  int numPenalized;
  double repetition;   // 1: off
  double presence;
  double frequency;
  int pendingId;       // -1: none
};

__device__ __forceinline__ float penalize(float v, int count, const HistoryParams& h, bool rep, bool presFreq) {
  if (rep) v = (float)(v > 0.f ? __ddiv_rn((double)v, h.repetition) : __dmul_rn((double)v, h.repetition));
  if (presFreq && count > 0) v = (float)__dsub_rn((double)v, __dadd_rn(__dmul_rn(h.frequency, (double)count), h.presence));
  return v;
}

// `row` is the block's own f32 copy of the logits row; every thread of the block calls this.
__device__ void apply_history(float* row, int vocab, const HistoryParams& h) {
  __shared__ int pendingSeen;
  if (threadIdx.x == 0) pendingSeen = 0;
  for (int j = threadIdx.x; j < h.numMasked; j += blockDim.x) {
    const int id = h.entries[2 * j];
    if (id >= 0 && id < vocab) row[id] = PGN_NEG_INF;
  }
  __syncthreads();
  const bool rep = h.repetition != 1.0, presFreq = h.presence != 0.0 || h.frequency != 0.0;
  const int* pairs = h.entries + 2 * h.numMasked;
  for (int j = threadIdx.x; j < h.numPenalized; j += blockDim.x) {
    const int id = pairs[2 * j];
    int count = pairs[2 * j + 1];
    if (id < 0 || id >= vocab) continue;
    if (id == h.pendingId) {
      count++;
      pendingSeen = 1;
    }
    row[id] = penalize(row[id], count, h, rep, presFreq);
  }
  __syncthreads();
  if (threadIdx.x == 0 && !pendingSeen && h.pendingId >= 0 && h.pendingId < vocab) row[h.pendingId] = penalize(row[h.pendingId], 1, h, rep, presFreq);
  __syncthreads();
}

}  // namespace pgn_penalties
