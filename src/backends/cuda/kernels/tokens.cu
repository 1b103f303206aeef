// Token ids of a step that the previous step is still sampling (async scheduling): the host
// launches step n+1 before step n's ids come back, so those inputs are read here, on the
// device, from step n's sampled ids. Also copies strided token ids into a compact vector.
//
// tokenIds[t] = src[srcIndex[t]] where 0 <= srcIndex[t] < numSrc; other entries are kept.
#include "common.cuh"

extern "C" __global__ void gather_token_ids(int* tokenIds, const int* src, const int* srcIndex, int numTokens, int numSrc) {
  PGN_PDL_WAIT();
  for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < numTokens; t += gridDim.x * blockDim.x) {
    const int s = srcIndex[t];
    if (s >= 0 && s < numSrc) tokenIds[t] = src[s];
  }
  PGN_PDL_TRIGGER();
}
