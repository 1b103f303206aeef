/**
 * Content hash of one full KV block, chained on the hash of the block before it, so
 * equal hashes mean (up to a 64-bit collision) equal prefixes. Lookups still compare
 * the block's tokens. Two independent 32-bit lanes (murmur3-style mixing), printed as
 * a 16-hex-digit string that serves as a Map key.
 */

/** The hash a sequence's first block is chained on. */
export const ROOT_BLOCK_HASH = '0000000000000000';

const SEED_A = 0x9747b28c;
const SEED_B = 0x5bd1e995;

function mix(h: number, k: number, c1: number, c2: number): number {
  k = Math.imul(k, c1);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, c2);
  h ^= k;
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

function finalize(h: number, length: number): number {
  h ^= length;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Hash of tokenIds[start, end) chained on `prevHash` (a value returned by this function or ROOT_BLOCK_HASH). */
export function hashBlockTokens(prevHash: string, tokenIds: readonly number[], start: number, end: number): string {
  const prevHi = parseInt(prevHash.slice(0, 8), 16) | 0;
  const prevLo = parseInt(prevHash.slice(8), 16) | 0;
  let a = mix(SEED_A, prevHi, 0xcc9e2d51, 0x1b873593);
  a = mix(a, prevLo, 0xcc9e2d51, 0x1b873593);
  let b = mix(SEED_B, prevLo, 0x85ebca77, 0xc2b2ae3d);
  b = mix(b, prevHi, 0x85ebca77, 0xc2b2ae3d);
  for (let i = start; i < end; i++) {
    const t = tokenIds[i] | 0;
    a = mix(a, t, 0xcc9e2d51, 0x1b873593);
    b = mix(b, t ^ 0x27d4eb2f, 0x85ebca77, 0xc2b2ae3d);
  }
  const n = end - start;
  return finalize(a, n).toString(16).padStart(8, '0') + finalize(b, n).toString(16).padStart(8, '0');
}
