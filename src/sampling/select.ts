/**
 * Partial selection over a vocab row without sorting it: a two-level radix select on
 * the f32 bit patterns (high 16 bits, then low 16 bits within the boundary bucket),
 * three linear passes whatever the row's length; small k uses one insertion pass.
 * Ties at the boundary go to the lowest token ids, so results are deterministic.
 * Keys stay int32 throughout: V8 keeps those unboxed, uint32 above 2^31 it does not.
 */

const NUM_BUCKETS = 1 << 16;
const BUCKET_BIAS = 1 << 15;
/** Below this k one pass with a sorted buffer beats the radix select's three. */
const SMALL_K = 32;
// reused across calls (single-threaded); each use clears the range it touched
const countHist = new Uint32Array(NUM_BUCKETS);
const massHist = new Float64Array(NUM_BUCKETS);

/** The f32 bit patterns of `x` as int32, without copying. */
function bitsOf(x: Float32Array): Int32Array {
  return new Int32Array(x.buffer, x.byteOffset, x.length);
}

/** A signed int32 with the order of the float whose bits these are (-inf < ... < -0 < +0 < ... < +inf). */
function orderKey(bits: number): number {
  return bits ^ ((bits >> 31) & 0x7fffffff);
}

/**
 * Indices of the `k` largest values, best first (value descending, then id ascending).
 * k is clamped to [0, values.length]; NaN entries are never selected by the small-k path.
 */
export function selectTopK(values: Float32Array, k: number): Int32Array {
  const n = values.length;
  k = Math.max(0, Math.min(k, n));
  if (k <= SMALL_K) return insertionTopK(values, k);
  const out = new Int32Array(k);
  const bits = bitsOf(values);
  const { key, numTies } = kthLargestKey(bits, k);
  let j = 0;
  let ties = numTies;
  for (let i = 0; i < n; i++) {
    const kk = orderKey(bits[i]!);
    if (kk > key || (kk === key && ties-- > 0)) out[j++] = i;
  }
  return out.sort((a, b) => values[b]! - values[a]! || a - b);
}

function insertionTopK(values: Float32Array, k: number): Int32Array {
  const ids = new Int32Array(k);
  const vals = new Float64Array(k);
  let count = 0;
  let worst = -Infinity;
  for (let i = 0; i < values.length && k > 0; i++) {
    const v = values[i]!;
    if (count === k ? !(v > worst) : v !== v) continue;
    let j = count < k ? count++ : k - 1;
    for (; j > 0 && vals[j - 1]! < v; j--) {
      vals[j] = vals[j - 1]!;
      ids[j] = ids[j - 1]!;
    }
    vals[j] = v;
    ids[j] = i;
    worst = vals[count - 1]!;
  }
  return ids.subarray(0, count);
}

/**
 * Keep exactly the `k` largest entries of `x` (ties to the lowest ids); set the rest to -Infinity.
 * No-op when k <= 0 or k >= x.length.
 */
export function maskOutsideTopK(x: Float32Array, k: number): void {
  const n = x.length;
  if (k <= 0 || k >= n) return;
  if (k <= SMALL_K) {
    const ids = insertionTopK(x, k);
    const kept = Array.from(ids, (id) => x[id]!);
    x.fill(-Infinity);
    ids.forEach((id, j) => (x[id] = kept[j]!));
    return;
  }
  const bits = bitsOf(x);
  const { key, numTies } = kthLargestKey(bits, k);
  let ties = numTies;
  for (let i = 0; i < n; i++) {
    const kk = orderKey(bits[i]!);
    if (kk < key || (kk === key && ties-- <= 0)) x[i] = -Infinity;
  }
}

/** The order key of the k-th largest entry (1 <= k <= n), and how many entries equal to it are among the top k. */
function kthLargestKey(bits: Int32Array, k: number): { key: number; numTies: number } {
  const n = bits.length;
  let top = 0;
  let bottom = NUM_BUCKETS - 1;
  for (let i = 0; i < n; i++) {
    const b = (orderKey(bits[i]!) >> 16) + BUCKET_BIAS;
    countHist[b]!++;
    if (b > top) top = b;
    if (b < bottom) bottom = b;
  }
  let need = k;
  let hi = top;
  for (; hi > bottom && countHist[hi]! < need; hi--) need -= countHist[hi]!;
  countHist.fill(0, bottom, top + 1);

  const hiBits = hi - BUCKET_BIAS;
  top = 0;
  bottom = NUM_BUCKETS - 1;
  for (let i = 0; i < n; i++) {
    const kk = orderKey(bits[i]!);
    if (kk >> 16 !== hiBits) continue;
    const b = kk & 0xffff;
    countHist[b]!++;
    if (b > top) top = b;
    if (b < bottom) bottom = b;
  }
  let lo = top;
  for (; lo > bottom && countHist[lo]! < need; lo--) need -= countHist[lo]!;
  countHist.fill(0, bottom, top + 1);
  return { key: (hiBits << 16) | lo, numTies: need };
}

/**
 * Top-p over unnormalised non-negative weights `w` (e.g. exp(logit - max)): keep the
 * smallest set of largest weights whose mass is >= topP of the total (ties to the lowest
 * ids, always at least one entry); zero the rest. Returns the kept mass.
 */
export function maskOutsideTopP(w: Float32Array, topP: number): number {
  const n = w.length;
  const bits = bitsOf(w); // non-negative floats: the bit pattern is already an order key
  let top = 0;
  let bottom = NUM_BUCKETS - 1;
  for (let i = 0; i < n; i++) {
    const b = bits[i]! >> 16;
    massHist[b]! += w[i]!;
    if (b > top) top = b;
    if (b < bottom) bottom = b;
  }
  let total = 0;
  for (let b = bottom; b <= top; b++) total += massHist[b]!;
  let need = topP * total;
  let hi = top;
  for (; hi > bottom && massHist[hi]! < need; hi--) need -= massHist[hi]!;
  massHist.fill(0, bottom, top + 1);

  top = 0;
  bottom = NUM_BUCKETS - 1;
  for (let i = 0; i < n; i++) {
    if (bits[i]! >> 16 !== hi) continue;
    const b = bits[i]! & 0xffff;
    massHist[b]! += w[i]!;
    if (b > top) top = b;
    if (b < bottom) bottom = b;
  }
  let lo = top;
  for (; lo > bottom && massHist[lo]! < need; lo--) need -= massHist[lo]!;
  massHist.fill(0, bottom, top + 1);
  const key = (hi << 16) | lo;

  let kept = 0;
  for (let i = 0; i < n; i++) {
    const b = bits[i]!;
    if (b > key || (b === key && need > 0)) {
      if (b === key) need -= w[i]!;
      kept += w[i]!;
    } else {
      w[i] = 0;
    }
  }
  return kept;
}
