// Sampling on the GPU: one thread block per row of f32 logits, the CPU sampler's semantics
// (src/sampling/sampler.ts) reproduced step for step so that a row gives the same token:
//   history -> rows with a min_tokens mask or penalties are first copied into the block's
//              scratch row and processed there (penalties.cuh); the others read the logits;
//   greedy  -> argmax of the (processed) logits (ties: lowest id);
//   else    -> y = f32(x / temperature) (divided in f64, as JS does), top-k on y (exactly k,
//              ties to the lowest ids), w = f32(exp(y - max y)) (f64 exp, as Math.exp),
//              top-p on w (smallest prefix of (w desc, id asc) with mass >= topP * total),
//              min-p (w >= minP), then one Philox draw u picks the first id whose running kept
//              mass exceeds u * mass; mass is the f64 sum of the unrounded exps when neither
//              top-p nor min-p applies, else the sum of the kept f32 weights (as the CPU).
// Log-probabilities are of the raw logits: the chosen token's and the top-n (n <= 20).
//
// Layout: warp w owns the id range [w * span, (w + 1) * span) (span a multiple of 128), lane l
// the 4 ids at chunk + 4 l of each 128-id chunk: loads are coalesced float4s and the order of
// ids is (warp, chunk, lane, element), so an "in id order" question (the j-th tie, the draw)
// is answered by per-warp totals, then one warp walking its own range.
// Selections (top-k, top-p, top-n) are radix selects over order-preserving 32-bit keys in three
// digit passes (11, 11, 10 bits) with shared-memory histograms; top-p histograms hold masses as
// fixed-point integers (w * 2^(63 - bits(vocab)) in two 32-bit words: exact, order-free sums
// that cannot overflow; 2^46 for a 128k vocab).
// Scratch: one f32 row per block, for the processed logits, y (top-k with temperature) or w
// (top-p), which several passes read, each overwriting the last in place. The logits are never
// written.
#include "common.cuh"
#include "penalties.cuh"

#define SAMPLE_MAX_TOP_N 20
#define SAMPLE_MAX_WARPS 32
#define SAMPLE_RADIX_BINS 2048
#define SAMPLE_INT_MAX 0x7fffffff
#define SAMPLE_GREEDY 1
#define SAMPLE_FULL 0xffffffffu

namespace pgn_sample {

// One row's parameters, 112 bytes (written by sample-params.ts: keep the two in step).
struct SampleParams {
  double temperature;  // ignored when greedy
  double topP;         // 1: off
  double minP;         // 0: off
  int topK;            // <= 0 or >= vocab: off
  int numLogprobs;     // -1: none; else top-n alternatives (<= SAMPLE_MAX_TOP_N)
  int logitsRow;       // row of the logits tensor
  int flags;           // SAMPLE_GREEDY
  unsigned key0, key1;                // Philox key (the seed)
  unsigned ctr0, ctr1, ctr2, ctr3;    // Philox counter of the block holding the draw
  unsigned word;                      // which of its 4 words is the draw
  int numMasked;                      // min_tokens: ids set to -inf (the first entries)
  double repetitionPenalty;           // 1: off
  double presencePenalty;
  double frequencyPenalty;
  int entryStart;                     // i32 word of the params buffer where the row's entries start
  int numPenalized;                   // (id, output count) pairs after the masked ids
  int pendingAt;                      // -1, or where in pendingIds this row's in-flight output token is
  int pad;
};

struct RadixResult {
  unsigned key;              // the selected key
  unsigned long long above;  // weight of the keys above it
  unsigned countAt;          // elements with exactly this key
  double need;               // the weight asked for
};

struct SampleShared {
  unsigned cnt[SAMPLE_RADIX_BINS];
  unsigned mlo[SAMPLE_RADIX_BINS];
  unsigned mhi[SAMPLE_RADIX_BINS];
  double warpD[SAMPLE_MAX_WARPS];
  int warpLast[SAMPLE_MAX_WARPS];
  unsigned warpU[SAMPLE_MAX_WARPS];
  float redV[SAMPLE_MAX_WARPS];
  int redI[SAMPLE_MAX_WARPS];
  double redS[SAMPLE_MAX_WARPS];
  unsigned digit;
  unsigned long long aboveInc;
  double need;
  int selWarp;
  unsigned rem;
  double base;
  int result;
  int listN;
  int listId[SAMPLE_MAX_TOP_N];
  float listV[SAMPLE_MAX_TOP_N];
};

struct RowCtx {
  int n, start, end, lane, warp, numWarps;
};

__device__ __forceinline__ RowCtx row_ctx(int n) {
  RowCtx c;
  c.n = n;
  c.lane = threadIdx.x & 31;
  c.warp = threadIdx.x >> 5;
  c.numWarps = blockDim.x >> 5;
  const int perChunk = c.numWarps * 128;
  const int span = (n + perChunk - 1) / perChunk * 128;
  c.start = min(n, c.warp * span);
  c.end = min(n, c.start + span);
  return c;
}

// Order-preserving key of a float: -inf < ... < -0 < +0 < ... < +inf (as select.ts' orderKey).
__device__ __forceinline__ unsigned ord_key(float f) {
  const unsigned u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ void load4(const float* p, int i, int end, float v[4]) {
  if (i + 3 < end && ((reinterpret_cast<unsigned long long>(p + i) & 15ull) == 0)) {
    const float4 q = *reinterpret_cast<const float4*>(p + i);
    v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
  } else {
#pragma unroll
    for (int j = 0; j < 4; j++) v[j] = i + j < end ? p[i + j] : 0.f;
  }
}

__device__ __forceinline__ void store4(float* p, int i, int end, const float v[4]) {
  if (i + 3 < end && ((reinterpret_cast<unsigned long long>(p + i) & 15ull) == 0)) {
    float4 q;
    q.x = v[0]; q.y = v[1]; q.z = v[2]; q.w = v[3];
    *reinterpret_cast<float4*>(p + i) = q;
  } else {
#pragma unroll
    for (int j = 0; j < 4; j++)
      if (i + j < end) p[i + j] = v[j];
  }
}

// f(i0, v[4]) for each 128-id chunk of this warp's range; the loop is warp-uniform.
template <typename F>
__device__ __forceinline__ void for_each_chunk(const RowCtx& c, const float* p, F f) {
  for (int base = c.start; base < c.end; base += 128) {
    const int i0 = base + c.lane * 4;
    float v[4];
    load4(p, i0, c.end, v);
    f(i0, v);
  }
}

// f(i, v) for each id of this thread, in increasing id order.
template <typename F>
__device__ __forceinline__ void for_each(const RowCtx& c, const float* p, F f) {
  for_each_chunk(c, p, [&](int i0, const float* v) {
#pragma unroll
    for (int j = 0; j < 4; j++)
      if (i0 + j < c.end) f(i0 + j, v[j]);
  });
}

template <typename T>
__device__ __forceinline__ T warp_sum_t(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(SAMPLE_FULL, v, o);
  return v;
}

__device__ __forceinline__ int warp_max_i(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(SAMPLE_FULL, v, o));
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_incl_scan(T v, int lane) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const T t = __shfl_up_sync(SAMPLE_FULL, v, o);
    if (lane >= o) v += t;
  }
  return v;
}

// Sum over the block in a fixed order; every thread gets the same value.
__device__ double block_sum_d(const RowCtx& c, double v, SampleShared& sh) {
  v = warp_sum_t(v);
  __syncthreads();
  if (c.lane == 0) sh.redS[c.warp] = v;
  __syncthreads();
  double s = 0.0;
  for (int w = 0; w < c.numWarps; w++) s += sh.redS[w];
  return s;
}

// ---- pass 1: argmax (ties: lowest id) and the log-sum-exp of the raw logits -------------
struct RawStats {
  float maxV;
  int argmax;
  double lse;
};

// (v, i, s): a running max, its lowest id, and sum(exp(x - v)); ids are -1 until a value > -inf.
__device__ __forceinline__ void merge_stats(float& v, int& i, double& s, float ov, int oi, double os) {
  const float m = fmaxf(v, ov);
  if (ov > v || (ov == v && oi >= 0 && (i < 0 || oi < i))) i = oi;
  double t = 0.0;
  if (v > PGN_NEG_INF) t += s * exp((double)v - (double)m);
  if (ov > PGN_NEG_INF) t += os * exp((double)ov - (double)m);
  s = t;
  v = m;
}

__device__ RawStats raw_stats(const RowCtx& c, const float* x, bool wantLse, SampleShared& sh) {
  float bv = PGN_NEG_INF;
  int bi = -1;
  double s = 0.0;
  for_each(c, x, [&](int i, float v) {
    if (v > bv) {
      if (wantLse) s = s * (double)expf(bv - v) + 1.0;
      bv = v;
      bi = i;
    } else if (wantLse && v > PGN_NEG_INF) {
      s += (double)expf(v - bv);
    }
  });
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(SAMPLE_FULL, bv, o);
    const int oi = __shfl_xor_sync(SAMPLE_FULL, bi, o);
    const double os = __shfl_xor_sync(SAMPLE_FULL, s, o);
    merge_stats(bv, bi, s, ov, oi, os);
  }
  __syncthreads();
  if (c.lane == 0) {
    sh.redV[c.warp] = bv;
    sh.redI[c.warp] = bi;
    sh.redS[c.warp] = s;
  }
  __syncthreads();
  float v = PGN_NEG_INF;
  int i = -1;
  double sum = 0.0;
  for (int w = 0; w < c.numWarps; w++) merge_stats(v, i, sum, sh.redV[w], sh.redI[w], sh.redS[w]);
  RawStats r;
  r.maxV = v;
  r.argmax = i;
  r.lse = v > PGN_NEG_INF ? (double)v + log(sum) : (double)PGN_NEG_INF;
  return r;
}

// ---- in id order: the id of the j-th (1-based) element that satisfies pred --------------
template <typename Pred>
__device__ int nth_match(const RowCtx& c, const float* p, const Pred& pred, unsigned j, SampleShared& sh) {
  unsigned cnt = 0;
  for_each(c, p, [&](int i, float v) {
    if (pred(v)) cnt++;
  });
  cnt = warp_sum_t(cnt);
  __syncthreads();
  if (c.lane == 0) sh.warpU[c.warp] = cnt;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned acc = 0;
    sh.selWarp = -1;
    sh.result = SAMPLE_INT_MAX;
    for (int w = 0; w < c.numWarps; w++) {
      if (acc + sh.warpU[w] >= j) {
        sh.selWarp = w;
        sh.rem = j - acc;
        break;
      }
      acc += sh.warpU[w];
    }
  }
  __syncthreads();
  if (c.warp == sh.selWarp) {
    unsigned rem = sh.rem;
    for (int base = c.start; base < c.end; base += 128) {
      const int i0 = base + c.lane * 4;
      float v[4];
      load4(p, i0, c.end, v);
      unsigned lc = 0;
#pragma unroll
      for (int e = 0; e < 4; e++)
        if (i0 + e < c.end && pred(v[e])) lc++;
      const unsigned incl = warp_incl_scan(lc, c.lane);
      const unsigned total = __shfl_sync(SAMPLE_FULL, incl, 31);
      if (total >= rem) {
        const unsigned ok = __ballot_sync(SAMPLE_FULL, incl >= rem);
        if (c.lane == __ffs(ok) - 1) {
          unsigned r = rem - (incl - lc);
          for (int e = 0; e < 4; e++) {
            if (i0 + e < c.end && pred(v[e]) && --r == 0) {
              sh.result = i0 + e;
              break;
            }
          }
        }
        break;
      }
      rem -= total;
    }
  }
  __syncthreads();
  return sh.result;
}

struct KeyIs {
  unsigned key;
  __device__ __forceinline__ bool operator()(float v) const { return ord_key(v) == key; }
};

// ---- radix select --------------------------------------------------------------------
// Fixed-point scale of the mass histograms: vocab weights <= 1 sum below 2^63.
__device__ __forceinline__ double mass_scale(int n) {
  return ldexp(1.0, 63 - (32 - __clz((unsigned)n)));
}

__device__ __forceinline__ unsigned long long quant_mass(float w, double scale) {
  return __double2ull_rn((double)w * scale);
}

__device__ __forceinline__ void add_mass(SampleShared& sh, unsigned d, unsigned long long q) {
  const unsigned lo = (unsigned)q, hi = (unsigned)(q >> 32);
  const unsigned old = atomicAdd(&sh.mlo[d], lo);
  const unsigned carry = (old + lo < old) ? 1u : 0u;
  if (hi + carry) atomicAdd(&sh.mhi[d], hi + carry);
}

template <bool MASS>
__device__ __forceinline__ unsigned long long bin_weight(const SampleShared& sh, int b) {
  return MASS ? ((unsigned long long)sh.mhi[b] << 32) | sh.mlo[b] : (unsigned long long)sh.cnt[b];
}

// Warp 0: the highest digit d of this pass with above + weight(digits >= d) >= need, as the CPU
// walks buckets from the top (`hist[hi] < need` -> next); the lowest non-empty one if none.
// In MASS mode on the first pass `needIn` is a fraction of the total weight.
template <bool MASS>
__device__ void select_digit(int lane, int nb, unsigned long long above, double needIn, bool fraction, SampleShared& sh) {
  const int per = nb >> 5, lo = lane * per;
  unsigned long long ls = 0;
  unsigned lcnt = 0;
  for (int t = 0; t < per; t++) {
    ls += bin_weight<MASS>(sh, lo + t);
    lcnt += sh.cnt[lo + t];
  }
  unsigned long long suf = ls;  // weight of the digits of lanes >= this one
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long t = __shfl_down_sync(SAMPLE_FULL, suf, o);
    if (lane + o < 32) suf += t;
  }
  double need = needIn;
  if (fraction) need = needIn * (double)__shfl_sync(SAMPLE_FULL, suf, 0);
  const unsigned ok = __ballot_sync(SAMPLE_FULL, (double)(above + suf) >= need);
  const unsigned nonEmpty = __ballot_sync(SAMPLE_FULL, lcnt > 0);
  const int L = ok ? 31 - __clz(ok) : (nonEmpty ? __ffs(nonEmpty) - 1 : 0);
  if (lane == L) {
    unsigned long long cum = above + (suf - ls);
    int d = lo;
    if (ok) {
      for (int b = lo + per - 1; b >= lo; b--) {
        const unsigned long long w = bin_weight<MASS>(sh, b);
        if ((double)(cum + w) >= need) {
          d = b;
          break;
        }
        cum += w;
      }
    } else {
      for (int b = lo; b < lo + per; b++) {
        if (sh.cnt[b] > 0) {
          d = b;
          break;
        }
      }
      for (int b = lo + per - 1; b > d; b--) cum += bin_weight<MASS>(sh, b);
    }
    sh.digit = (unsigned)d;
    sh.aboveInc = cum - above;
    sh.need = need;
  }
}

// The key K such that the weight of keys > K is < need <= the weight of keys >= K (need =
// k in count mode; topP * total in MASS mode, weights = quant_mass(w)).
template <bool MASS>
__device__ RadixResult radix_select(const RowCtx& c, const float* p, double needOrFraction, SampleShared& sh) {
  unsigned prefix = 0, pmask = 0, countAt = 0;
  unsigned long long above = 0;
  double need = needOrFraction;
  const double scale = mass_scale(c.n);
  for (int pass = 0; pass < 3; pass++) {
    const int shift = pass == 0 ? 21 : pass == 1 ? 10 : 0;
    const int nb = pass == 2 ? 1024 : 2048;
    __syncthreads();
    for (int b = threadIdx.x; b < nb; b += blockDim.x) {
      sh.cnt[b] = 0;
      if (MASS) {
        sh.mlo[b] = 0;
        sh.mhi[b] = 0;
      }
    }
    __syncthreads();
    for_each(c, p, [&](int i, float v) {
      const unsigned key = ord_key(v);
      if ((key & pmask) == prefix) {
        const unsigned d = (key >> shift) & (unsigned)(nb - 1);
        atomicAdd(&sh.cnt[d], 1u);
        if (MASS) add_mass(sh, d, quant_mass(v, scale));
      }
    });
    __syncthreads();
    if (c.warp == 0) select_digit<MASS>(c.lane, nb, above, need, MASS && pass == 0, sh);
    __syncthreads();
    const unsigned d = sh.digit;
    prefix |= d << shift;
    pmask |= (unsigned)(nb - 1) << shift;
    above += sh.aboveInc;
    countAt = sh.cnt[d];
    need = sh.need;
  }
  RadixResult r;
  r.key = prefix;
  r.above = above;
  r.countAt = countAt;
  r.need = need;
  return r;
}

// ---- sampling weights ---------------------------------------------------------------------
struct Weights {
  int mode;        // what the source row holds: 0 = w, 1 = y, 2 = x (y = x / T)
  double T;
  float m;         // max y
  bool topK;
  unsigned keyK;   // keep key > keyK, or == keyK with id <= tieK
  int tieK;
  bool topP;
  unsigned keyP;
  int tieP;
  double minP;

  // exp(y - m) in f64 (0 outside top-k), from a y or x source
  __device__ __forceinline__ double expw(int i, float v) const {
    const float y = mode == 2 ? (float)((double)v / T) : v;
    if (topK) {
      const unsigned k = ord_key(y);
      if (!(k > keyK || (k == keyK && i <= tieK))) return 0.0;
    }
    return exp((double)y - (double)m);
  }
  // the f32 weight if it survives top-p and min-p, else 0
  __device__ __forceinline__ float kept_w(int i, float w) const {
    if (!(w > 0.f)) return 0.f;
    if (topP) {
      const unsigned k = ord_key(w);
      if (!(k > keyP || (k == keyP && i <= tieP))) return 0.f;
    }
    if (minP > 0.0 && (double)w < minP) return 0.f;
    return w;
  }
  __device__ __forceinline__ float kept(int i, float v) const {
    return kept_w(i, mode == 0 ? v : (float)expw(i, v));
  }
};

// Per-warp kept mass and last kept id, for the draw.
__device__ __forceinline__ void finish_kept(const RowCtx& c, double kSum, int last, SampleShared& sh) {
  kSum = warp_sum_t(kSum);
  last = warp_max_i(last);
  __syncthreads();
  if (c.lane == 0) {
    sh.warpD[c.warp] = kSum;
    sh.warpLast[c.warp] = last;
  }
  __syncthreads();
}

// Philox4x32-10 (as rng.ts): the draw's 32-bit word.
__device__ __forceinline__ unsigned philox_word(const SampleParams& P) {
  unsigned c0 = P.ctr0, c1 = P.ctr1, c2 = P.ctr2, c3 = P.ctr3, k0 = P.key0, k1 = P.key1;
  for (int r = 0; r < 10; r++) {
    if (r > 0) {
      k0 += 0x9e3779b9u;
      k1 += 0xbb67ae85u;
    }
    const unsigned hi0 = __umulhi(0xd2511f53u, c0), lo0 = 0xd2511f53u * c0;
    const unsigned hi1 = __umulhi(0xcd9e8d57u, c2), lo1 = 0xcd9e8d57u * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  return P.word == 0 ? c0 : P.word == 1 ? c1 : P.word == 2 ? c2 : c3;
}

// The first id, in id order, whose running kept mass exceeds target; the last kept id when
// rounding leaves the target at the very end of the mass.
__device__ int draw_walk(const RowCtx& c, const float* p, const Weights& W, double target, SampleShared& sh) {
  __syncthreads();
  if (threadIdx.x == 0) {
    double acc = 0.0;
    int last = -1;
    sh.selWarp = -1;
    for (int w = 0; w < c.numWarps; w++) {
      last = max(last, sh.warpLast[w]);
      const double t = acc + sh.warpD[w];
      if (t > target) {
        sh.selWarp = w;
        sh.base = acc;
        break;
      }
      acc = t;
    }
    sh.result = sh.selWarp >= 0 ? sh.warpLast[sh.selWarp] : last;
  }
  __syncthreads();
  if (c.warp == sh.selWarp) {
    double cum = sh.base;
    for (int base = c.start; base < c.end; base += 128) {
      const int i0 = base + c.lane * 4;
      float v[4], kw[4];
      load4(p, i0, c.end, v);
      double ls = 0.0;
#pragma unroll
      for (int e = 0; e < 4; e++) {
        kw[e] = i0 + e < c.end ? W.kept(i0 + e, v[e]) : 0.f;
        ls += (double)kw[e];
      }
      const double incl = warp_incl_scan(ls, c.lane);
      double excl = __shfl_up_sync(SAMPLE_FULL, incl, 1);
      if (c.lane == 0) excl = 0.0;
      const double total = __shfl_sync(SAMPLE_FULL, incl, 31);
      if (cum + total > target) {
        const unsigned ok = __ballot_sync(SAMPLE_FULL, cum + incl > target);
        if (c.lane == __ffs(ok) - 1) {
          double cc = cum + excl;
          int tok = -1, lastKept = -1;
          for (int e = 0; e < 4; e++) {
            if (kw[e] > 0.f) {
              cc += (double)kw[e];
              lastKept = i0 + e;
              if (cc > target) {
                tok = i0 + e;
                break;
              }
            }
          }
          sh.result = tok >= 0 ? tok : lastKept;
        }
        break;
      }
      cum += total;
    }
  }
  __syncthreads();
  return sh.result;
}

// A non-greedy row: -1 when no token can be drawn (every logit -inf or NaN).
__device__ int sample_token(const RowCtx& c, const float* x, float* s, const SampleParams& P, float maxX, SampleShared& sh) {
  const double T = P.temperature;
  const bool scaleT = T != 1.0;
  const bool useTopK = P.topK > 0 && P.topK < c.n, useTopP = P.topP < 1.0, useMinP = P.minP > 0.0;
  Weights W;
  W.mode = scaleT ? 2 : 1;
  W.T = T;
  W.m = scaleT ? (float)((double)maxX / T) : maxX;
  W.topK = useTopK;
  W.keyK = 0;
  W.tieK = SAMPLE_INT_MAX;
  W.topP = false;
  W.keyP = 0;
  W.tieP = SAMPLE_INT_MAX;
  W.minP = P.minP;

  const float* src = x;
  if (useTopK) {
    if (scaleT) {
      for_each_chunk(c, x, [&](int i0, const float* v) {
        float y[4];
#pragma unroll
        for (int e = 0; e < 4; e++) y[e] = (float)((double)v[e] / T);
        store4(s, i0, c.end, y);
      });
      src = s;
      W.mode = 1;
    }
    const RadixResult r = radix_select<false>(c, src, (double)P.topK, sh);
    const unsigned numTies = (unsigned)P.topK - (unsigned)r.above;
    W.keyK = r.key;
    W.tieK = r.countAt > numTies ? nth_match(c, src, KeyIs{r.key}, numTies, sh) : SAMPLE_INT_MAX;
  }

  // w = exp(y - m); the f64 sum of the unrounded exps is the CPU's mass without top-p/min-p
  double eSum = 0.0, kSum = 0.0;
  int last = -1;
  for_each_chunk(c, src, [&](int i0, const float* v) {
    float w[4];
#pragma unroll
    for (int e = 0; e < 4; e++) {
      w[e] = 0.f;
      if (i0 + e < c.end) {
        const double ex = W.expw(i0 + e, v[e]);
        eSum += ex;
        w[e] = (float)ex;
        if (!useTopP) {
          const float k = W.kept_w(i0 + e, w[e]);
          if (k > 0.f) {
            kSum += (double)k;
            last = i0 + e;
          }
        }
      }
    }
    if (useTopP) store4(s, i0, c.end, w);
  });
  finish_kept(c, kSum, last, sh);
  const double mass0 = block_sum_d(c, eSum, sh);
  if (!(mass0 > 0.0)) return -1;

  if (useTopP) {
    src = s;
    W.mode = 0;
    const RadixResult r = radix_select<true>(c, s, P.topP, sh);
    // ties at the threshold are kept in id order while the CPU's remaining need is > 0
    const double needRem = r.need - (double)r.above;
    const unsigned long long qv = quant_mass(__uint_as_float(r.key & 0x7fffffffu), mass_scale(c.n));
    unsigned j = 0;
    if (needRem > 0.0) j = qv > 0 ? (unsigned)fmin((double)r.countAt, ceil(needRem / (double)qv)) : r.countAt;
    W.topP = true;
    W.keyP = r.key;
    W.tieP = j >= r.countAt ? SAMPLE_INT_MAX : j == 0 ? -1 : nth_match(c, s, KeyIs{r.key}, j, sh);
    kSum = 0.0;
    last = -1;
    for_each(c, s, [&](int i, float v) {
      const float k = W.kept_w(i, v);
      if (k > 0.f) {
        kSum += (double)k;
        last = i;
      }
    });
    finish_kept(c, kSum, last, sh);
  }
  double mass = mass0;
  if (useTopP || useMinP) {
    mass = 0.0;
    for (int w = 0; w < c.numWarps; w++) mass += sh.warpD[w];
  }
  const double u = (double)(philox_word(P) >> 8) * (1.0 / 16777216.0);
  return draw_walk(c, src, W, u * mass, sh);
}

// Raw log-probabilities of the k best logits, best first (ties: lowest id).
__device__ void top_logprobs(const RowCtx& c, const float* x, int k, double lse, int* o, SampleShared& sh) {
  const RadixResult r = radix_select<false>(c, x, (double)k, sh);
  const unsigned numTies = (unsigned)k - (unsigned)r.above;
  const int tieCut = r.countAt > numTies ? nth_match(c, x, KeyIs{r.key}, numTies, sh) : SAMPLE_INT_MAX;
  __syncthreads();
  if (threadIdx.x == 0) sh.listN = 0;
  __syncthreads();
  for_each(c, x, [&](int i, float v) {
    const unsigned key = ord_key(v);
    if (key > r.key || (key == r.key && i <= tieCut)) {
      const int at = atomicAdd(&sh.listN, 1);
      if (at < SAMPLE_MAX_TOP_N) {
        sh.listId[at] = i;
        sh.listV[at] = v;
      }
    }
  });
  __syncthreads();
  if (threadIdx.x == 0) {
    const int n = min(min(sh.listN, k), SAMPLE_MAX_TOP_N);
    for (int a = 1; a < n; a++) {
      const int id = sh.listId[a];
      const float v = sh.listV[a];
      int b = a;
      for (; b > 0 && (sh.listV[b - 1] < v || (sh.listV[b - 1] == v && sh.listId[b - 1] > id)); b--) {
        sh.listId[b] = sh.listId[b - 1];
        sh.listV[b] = sh.listV[b - 1];
      }
      sh.listId[b] = id;
      sh.listV[b] = v;
    }
    for (int a = 0; a < n; a++) {
      o[2 + 2 * a] = sh.listId[a];
      o[3 + 2 * a] = __float_as_int((float)((double)sh.listV[a] - lse));
    }
  }
}

// s <- x with the row's min_tokens mask and penalties applied (only rows that have them).
__device__ __forceinline__ void process_history(const RowCtx& c, const float* x, float* s, const SampleParams* params, const int* pendingIds, int row) {
  for_each_chunk(c, x, [&](int i0, const float* v) { store4(s, i0, c.end, v); });
  __syncthreads();
  const SampleParams& P = params[row];
  pgn_penalties::HistoryParams h;
  h.entries = reinterpret_cast<const int*>(params) + P.entryStart;
  h.numMasked = P.numMasked;
  h.numPenalized = P.numPenalized;
  h.repetition = P.repetitionPenalty;
  h.presence = P.presencePenalty;
  h.frequency = P.frequencyPenalty;
  h.pendingId = P.pendingAt >= 0 ? pendingIds[P.pendingAt] : -1;
  pgn_penalties::apply_history(s, c.n, h);
}

}  // namespace pgn_sample

// out [numRows, outStride] i32: token (-1: none), logprob (f32 bits; NaN when not asked),
// then (id, f32 logprob) pairs of the top-n. scratch f32 [numRows, vocab]; logits f32
// [*, vocab]; params [numRows] records followed by the rows' history entries; pendingIds: token
// ids that rows with pendingAt >= 0 read (async scheduling: the step's input ids), or null.
// Grid: one block per row.
extern "C" __global__ void __launch_bounds__(512) sample_rows(int* out, float* scratch, const float* logits, const pgn_sample::SampleParams* params, int vocab, int outStride, const int* pendingIds) {
  PGN_PDL_WAIT();
  using namespace pgn_sample;
  __shared__ SampleShared sh;
  const SampleParams P = params[blockIdx.x];
  const RowCtx c = row_ctx(vocab);
  const float* x = logits + (long long)P.logitsRow * vocab;
  float* s = scratch + (long long)blockIdx.x * vocab;
  int* o = out + (long long)blockIdx.x * outStride;

  // the row the token is chosen from; log-probabilities stay those of the raw logits
  const float* src = x;
  if (P.numMasked > 0 || P.numPenalized > 0 || P.pendingAt >= 0) {
    process_history(c, x, s, params, pendingIds, blockIdx.x);
    src = s;
  }
  const bool wantLse = P.numLogprobs >= 0;
  const RawStats st = raw_stats(c, src, wantLse && src == x, sh);
  const int token = (P.flags & SAMPLE_GREEDY) ? st.argmax : sample_token(c, src, s, P, st.maxV, sh);
  const double lse = src == x || !wantLse ? st.lse : raw_stats(c, x, true, sh).lse;
  if (P.numLogprobs > 0) top_logprobs(c, x, min(P.numLogprobs, vocab), lse, o, sh);
  if (threadIdx.x == 0) {
    o[0] = token;
    const bool want = P.numLogprobs >= 0 && token >= 0;
    o[1] = __float_as_int(want ? (float)((double)x[token] - lse) : __int_as_float(0x7fc00000));
  }
  PGN_PDL_TRIGGER();
}
