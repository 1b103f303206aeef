/**
 * Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11):
 * a counter-based generator, the one cuRAND and PyTorch use on the GPU. The key is the
 * 64-bit seed (low word, high word), the 128-bit counter starts at 0 and each block of
 * four 32-bit outputs is consumed in order, so a CUDA kernel given (seed, draw index)
 * reproduces the same stream.
 */
import { randomBytes } from 'node:crypto';

const M0 = 0xd2511f53;
const M1 = 0xcd9e8d57;
const W0 = 0x9e3779b9;
const W1 = 0xbb67ae85;
const ROUNDS = 10;
/** 24 random bits give a float exactly representable in f32, strictly below 1 */
const FLOAT_SCALE = 2 ** -24;

export class Rng {
  private readonly key0: number;
  private readonly key1: number;
  private readonly counter = new Uint32Array(4);
  private readonly block = new Uint32Array(4);
  private used = 4;
  /** `block` is not yet philox(counter - 1): skip() moved past it without computing it */
  private stale = false;

  /** @param seed any safe integer; negative seeds use their 64-bit two's complement */
  constructor(seed: number) {
    const s = BigInt.asUintN(64, BigInt(Math.trunc(seed)));
    this.key0 = Number(s & 0xffffffffn);
    this.key1 = Number(s >> 32n);
  }

  /** A generator seeded from the OS entropy source. */
  static fromEntropy(): Rng {
    const b = randomBytes(6);
    return new Rng(b.readUIntLE(0, 6));
  }

  nextUint32(): number {
    if (this.used === 4) {
      philox4x32(this.counter, this.key0, this.key1, this.block);
      incrementCounter(this.counter);
      this.used = 0;
      this.stale = false;
    } else if (this.stale) {
      const c = Uint32Array.from(this.counter);
      decrementCounter(c);
      philox4x32(c, this.key0, this.key1, this.block);
      this.stale = false;
    }
    return this.block[this.used++]!;
  }

  /**
   * Where the next 32-bit output comes from: word `word` (0..3) of
   * `philox4x32(counter, key0, key1)`. A GPU kernel given this position draws exactly what
   * `nextUint32` would; `skip(1)` then moves this generator past that draw.
   */
  position(): { key0: number; key1: number; counter: Uint32Array; word: number } {
    const counter = Uint32Array.from(this.counter);
    if (this.used === 4) return { key0: this.key0, key1: this.key1, counter, word: 0 };
    decrementCounter(counter);
    return { key0: this.key0, key1: this.key1, counter, word: this.used };
  }

  /** Advances past `count` outputs, as `count` calls of nextUint32 would, without computing them. */
  skip(count = 1): void {
    for (let i = 0; i < count; i++) {
      if (this.used === 4) {
        incrementCounter(this.counter);
        this.used = 0;
        this.stale = true;
      }
      this.used++;
    }
  }

  /** Uniform in [0, 1), 24-bit resolution. */
  nextFloat(): number {
    return (this.nextUint32() >>> 8) * FLOAT_SCALE;
  }
}

/** One Philox4x32-10 block: out = philox(counter, key). */
export function philox4x32(counter: ArrayLike<number>, key0: number, key1: number, out: Uint32Array): void {
  let c0 = counter[0]! >>> 0;
  let c1 = counter[1]! >>> 0;
  let c2 = counter[2]! >>> 0;
  let c3 = counter[3]! >>> 0;
  let k0 = key0 >>> 0;
  let k1 = key1 >>> 0;
  for (let r = 0; r < ROUNDS; r++) {
    if (r > 0) {
      k0 = (k0 + W0) >>> 0;
      k1 = (k1 + W1) >>> 0;
    }
    const hi0 = mulhi32(M0, c0);
    const lo0 = Math.imul(M0, c0) >>> 0;
    const hi1 = mulhi32(M1, c2);
    const lo1 = Math.imul(M1, c2) >>> 0;
    c0 = (hi1 ^ c1 ^ k0) >>> 0;
    c1 = lo1;
    c2 = (hi0 ^ c3 ^ k1) >>> 0;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

/** High 32 bits of the 64-bit product of two uint32 (exact in doubles via 16-bit halves). */
function mulhi32(a: number, b: number): number {
  const aLo = a & 0xffff;
  const aHi = a >>> 16;
  const bLo = b & 0xffff;
  const bHi = b >>> 16;
  const cross = ((aLo * bLo) >>> 16) + (aHi * bLo & 0xffff) + aLo * bHi;
  return (aHi * bHi + ((aHi * bLo) >>> 16) + Math.floor(cross / 0x10000)) >>> 0;
}

function decrementCounter(c: Uint32Array): void {
  for (let i = 0; i < 4; i++) {
    c[i] = (c[i]! - 1) >>> 0;
    if (c[i] !== 0xffffffff) return;
  }
}

function incrementCounter(c: Uint32Array): void {
  for (let i = 0; i < 4; i++) {
    c[i] = (c[i]! + 1) >>> 0;
    if (c[i] !== 0) return;
  }
}
