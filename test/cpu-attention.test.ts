/**
 * CPU backend: ropeWriteKv against a direct HF-style rotary implementation, and paged
 * attention against dense causal attention computed from unpaged K/V.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend, cpuData } from '../src/backends/cpu/cpu-backend.js';
import type { AttentionMetadata, LayerKvCache, RopeParams, Tensor } from '../src/backends/backend.js';
import type { RopeStyle } from '../src/models/spec.js';
import { assertClose, assertInternal, rng, shuffled, uniform } from './helpers/random.js';

const be = new CpuBackend();




function f32(t: Tensor): Float32Array {
  return cpuData(t) as Float32Array;
}



// ---- rope ------------------------------------------------------------------------

const THETA = 10000;

function cosSinTable(maxPositions: number, rotaryDim: number): Float32Array {
  const half = rotaryDim / 2;
  const table = new Float32Array(maxPositions * rotaryDim);
  for (let p = 0; p < maxPositions; p++) {
    for (let j = 0; j < half; j++) {
      const angle = p * THETA ** ((-2 * j) / rotaryDim);
      table[p * rotaryDim + j] = Math.cos(angle);
      table[p * rotaryDim + half + j] = Math.sin(angle);
    }
  }
  return table;
}

/** HF: x * cos + rotate_half(x) * sin (neox), or rotate_every_two with interleaved cos/sin (gptj). */
function refRotate(head: Float32Array, pos: number, rotaryDim: number, style: RopeStyle): Float32Array {
  const half = rotaryDim / 2;
  const out = Float32Array.from(head);
  for (let d = 0; d < rotaryDim; d++) {
    const freq = style === 'neox' ? d % half : Math.floor(d / 2);
    const angle = pos * THETA ** ((-2 * freq) / rotaryDim);
    let rotated: number;
    if (style === 'neox') rotated = d < half ? -head[d + half]! : head[d - half]!;
    else rotated = d % 2 === 0 ? -head[d + 1]! : head[d - 1]!;
    out[d] = head[d]! * Math.cos(angle) + rotated * Math.sin(angle);
  }
  return out;
}

function ropeCase(style: RopeStyle, headDim: number, rotaryDim: number, withTable: boolean): void {
  const r = rng(headDim * 100 + rotaryDim + (style === 'gptj' ? 7 : 0));
  const p: RopeParams = { numHeads: 4, numKvHeads: 2, headDim, rotaryDim, style };
  const qWidth = p.numHeads * headDim, kvWidth = p.numKvHeads * headDim, rowWidth = qWidth + 2 * kvWidth;
  const T = 7, maxPositions = 64, numSlots = 40;
  const qkv0 = uniform(T * rowWidth, r);
  const pos = Int32Array.from({ length: T }, () => Math.floor(r() * maxPositions));
  const slots = Int32Array.from(shuffled(numSlots, r).slice(0, T));
  slots[3] = -1;
  const qkv = be.fromF32([T, rowWidth], qkv0);
  const cache: LayerKvCache = { k: be.empty([numSlots, kvWidth], 'f32'), v: be.empty([numSlots, kvWidth], 'f32') };
  f32(cache.k).fill(NaN);
  f32(cache.v).fill(NaN);
  const table = withTable ? be.fromF32([maxPositions, rotaryDim], cosSinTable(maxPositions, rotaryDim)) : null;
  be.ropeWriteKv(qkv, be.fromI32([T], pos), table, cache, be.fromI32([T], slots), T, p);

  const what = `${style} headDim ${headDim} rotaryDim ${rotaryDim}${withTable ? '' : ' (no table)'}`;
  for (let t = 0; t < T; t++) {
    const row = qkv0.subarray(t * rowWidth, (t + 1) * rowWidth);
    const got = f32(qkv).subarray(t * rowWidth, (t + 1) * rowWidth);
    const rotAt = (x: Float32Array) => (withTable ? refRotate(x, pos[t]!, rotaryDim, style) : x);
    for (let h = 0; h < p.numHeads; h++) {
      assertClose(got.subarray(h * headDim, (h + 1) * headDim), rotAt(row.subarray(h * headDim, (h + 1) * headDim)), 1e-5, `${what}: q token ${t} head ${h}`);
    }
    assertClose(got.subarray(qWidth), row.subarray(qWidth), 0, `${what}: k|v of token ${t} in qkv untouched`);
    if (slots[t]! < 0) continue;
    const k = f32(cache.k).subarray(slots[t]! * kvWidth, (slots[t]! + 1) * kvWidth);
    const v = f32(cache.v).subarray(slots[t]! * kvWidth, (slots[t]! + 1) * kvWidth);
    for (let h = 0; h < p.numKvHeads; h++) {
      const kSrc = row.subarray(qWidth + h * headDim, qWidth + (h + 1) * headDim);
      assertClose(k.subarray(h * headDim, (h + 1) * headDim), rotAt(kSrc), 1e-5, `${what}: cache k token ${t} head ${h}`);
    }
    assertClose(v, row.subarray(qWidth + kvWidth), 0, `${what}: cache v token ${t}`);
  }
  const written = new Set([...slots].filter((s) => s >= 0));
  for (let s = 0; s < numSlots; s++) {
    if (written.has(s)) continue;
    const untouched = (d: Float32Array) => d.subarray(s * kvWidth, (s + 1) * kvWidth).every(Number.isNaN);
    assert.ok(untouched(f32(cache.k)) && untouched(f32(cache.v)), `${what}: slot ${s} must not be written`);
  }
}

test('ropeWriteKv: neox and gptj, full and partial rotary, against HF rotate_half / rotate_every_two', () => {
  ropeCase('neox', 16, 16, true);
  ropeCase('gptj', 16, 16, true);
  ropeCase('neox', 16, 8, true);
  ropeCase('gptj', 32, 8, true);
  ropeCase('neox', 64, 64, true);
});

test('ropeWriteKv without a cos/sin table copies k and v unrotated and leaves q alone', () => {
  ropeCase('neox', 16, 16, false);
});

test('ropeWriteKv rejects slots outside the cache and positions outside the table', () => {
  const p: RopeParams = { numHeads: 2, numKvHeads: 1, headDim: 4, rotaryDim: 4, style: 'neox' };
  const qkv = be.empty([2, 16], 'f32');
  const cache: LayerKvCache = { k: be.empty([8, 4], 'f32'), v: be.empty([8, 4], 'f32') };
  const table = be.fromF32([10, 4], cosSinTable(10, 4));
  const pos = be.fromI32([2], Int32Array.from([0, 1]));
  assertInternal(() => be.ropeWriteKv(qkv, pos, table, cache, be.fromI32([2], Int32Array.from([0, 8])), 2, p), /slotMapping\[1\] = 8 is outside the cache \(8 slots\)/);
  assertInternal(() => be.ropeWriteKv(qkv, be.fromI32([2], Int32Array.from([3, 10])), table, cache, be.fromI32([2], Int32Array.from([0, 1])), 2, p), /positions\[1\] = 10 is outside the cos\/sin table/);
  assertInternal(() => be.ropeWriteKv(qkv, pos, table, cache, pos, 2, { ...p, numHeads: 3 }), /qkv has rows of 16 elements, expected 20/);
});

// ---- attention ---------------------------------------------------------------------

interface SeqShape { readonly kvLen: number; readonly qLen: number }

interface AttnCase {
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly blockSize: number;
  readonly seqs: readonly SeqShape[];
  readonly slidingWindow?: number | null;
  readonly alibi?: boolean;
  readonly softcap?: number | null;
  /** scale of q, to push scores past the softcap */
  readonly qScale?: number;
}

interface SeqData { readonly q: Float32Array; readonly k: Float32Array; readonly v: Float32Array }

function alibiSlopes(numHeads: number): Float32Array {
  return Float32Array.from({ length: numHeads }, (_, h) => 2 ** ((-8 * (h + 1)) / numHeads));
}

/** Dense masked attention over one sequence's unpaged K/V: [qLen, numHeads * headDim]. */
function denseAttention(c: AttnCase, seq: SeqShape, d: SeqData): Float32Array {
  const { numHeads, numKvHeads, headDim } = c;
  const scale = 1 / Math.sqrt(headDim);
  const slopes = c.alibi ? alibiSlopes(numHeads) : null;
  const out = new Float32Array(seq.qLen * numHeads * headDim);
  for (let i = 0; i < seq.qLen; i++) {
    const pos = seq.kvLen - seq.qLen + i;
    for (let h = 0; h < numHeads; h++) {
      const g = Math.floor((h * numKvHeads) / numHeads);
      const scores = new Array<number>(seq.kvLen).fill(-Infinity);
      for (let j = 0; j < seq.kvLen; j++) {
        const masked = j > pos || (c.slidingWindow != null && pos - j >= c.slidingWindow);
        if (masked) continue;
        let s = 0;
        for (let e = 0; e < headDim; e++) s += d.q[(i * numHeads + h) * headDim + e]! * d.k[(j * numKvHeads + g) * headDim + e]!;
        s *= scale;
        if (c.softcap != null) s = c.softcap * Math.tanh(s / c.softcap);
        if (slopes) s += slopes[h]! * (j - pos);
        scores[j] = s;
      }
      const m = Math.max(...scores);
      const p = scores.map((s) => Math.exp(s - m));
      const z = p.reduce((a, b) => a + b, 0);
      for (let e = 0; e < headDim; e++) {
        let acc = 0;
        for (let j = 0; j < seq.kvLen; j++) acc += (p[j]! / z) * d.v[(j * numKvHeads + g) * headDim + e]!;
        out[(i * numHeads + h) * headDim + e] = acc;
      }
    }
  }
  return out;
}

/** Scatters each seq's K/V into a NaN-poisoned paged cache with shuffled blocks, runs attention, compares. */
function runAttention(c: AttnCase, seed: number): { actual: Float32Array; expected: Float32Array[] } {
  const r = rng(seed);
  const { numHeads, numKvHeads, headDim, blockSize, seqs } = c;
  const qWidth = numHeads * headDim, kvWidth = numKvHeads * headDim, rowWidth = qWidth + 2 * kvWidth;
  const data: SeqData[] = seqs.map((s) => ({ q: uniform(s.qLen * qWidth, r, c.qScale ?? 1), k: uniform(s.kvLen * kvWidth, r), v: uniform(s.kvLen * kvWidth, r) }));
  const blocksNeeded = seqs.map((s) => Math.ceil(s.kvLen / blockSize));
  const maxBlocksPerSeq = Math.max(...blocksNeeded) + 1;
  const numBlocks = blocksNeeded.reduce((a, b) => a + b, 0) + 3;
  const order = shuffled(numBlocks, r);
  const blockTables = new Int32Array(seqs.length * maxBlocksPerSeq).fill(-1);
  const cacheK = new Float32Array(numBlocks * blockSize * kvWidth).fill(NaN);
  const cacheV = new Float32Array(numBlocks * blockSize * kvWidth).fill(NaN);
  const cuSeqlensQ = new Int32Array(seqs.length + 1);
  seqs.forEach((s, i) => {
    for (let b = 0; b < blocksNeeded[i]!; b++) blockTables[i * maxBlocksPerSeq + b] = order.pop()!;
    for (let j = 0; j < s.kvLen; j++) {
      const slot = blockTables[i * maxBlocksPerSeq + Math.floor(j / blockSize)]! * blockSize + (j % blockSize);
      cacheK.set(data[i]!.k.subarray(j * kvWidth, (j + 1) * kvWidth), slot * kvWidth);
      cacheV.set(data[i]!.v.subarray(j * kvWidth, (j + 1) * kvWidth), slot * kvWidth);
    }
    cuSeqlensQ[i + 1] = cuSeqlensQ[i]! + s.qLen;
  });
  const T = cuSeqlensQ[seqs.length]!;
  const qkv = new Float32Array((T + 1) * rowWidth).fill(NaN); // k|v columns stay NaN: attention reads the cache
  seqs.forEach((s, i) => {
    for (let t = 0; t < s.qLen; t++) qkv.set(data[i]!.q.subarray(t * qWidth, (t + 1) * qWidth), (cuSeqlensQ[i]! + t) * rowWidth);
  });
  const meta: AttentionMetadata = {
    numSeqs: seqs.length,
    numTokens: T,
    cuSeqlensQ: be.fromI32([seqs.length + 1], cuSeqlensQ),
    contextLens: be.fromI32([seqs.length], Int32Array.from(seqs, (s) => s.kvLen)),
    blockTables: be.fromI32([seqs.length, maxBlocksPerSeq], blockTables),
    maxBlocksPerSeq,
    maxSeqlenQ: Math.max(...seqs.map((s) => s.qLen)),
    maxSeqlenK: Math.max(...seqs.map((s) => s.kvLen)),
    isDecode: seqs.every((s) => s.qLen === 1),
  };
  const out = be.empty([T + 1, qWidth], 'f32');
  f32(out).fill(NaN);
  be.attention(out, be.fromF32([T + 1, rowWidth], qkv), { k: be.fromF32([numBlocks * blockSize, kvWidth], cacheK), v: be.fromF32([numBlocks * blockSize, kvWidth], cacheV) }, meta, {
    numHeads, numKvHeads, headDim, blockSize,
    scale: 1 / Math.sqrt(headDim),
    slidingWindow: c.slidingWindow ?? null,
    alibiSlopes: c.alibi ? be.fromF32([numHeads], alibiSlopes(numHeads)) : null,
    logitSoftcap: c.softcap ?? null,
  });
  assert.ok(f32(out).subarray(T * qWidth).every(Number.isNaN), 'the row past numTokens is untouched');
  const expected = seqs.map((s, i) => denseAttention(c, s, data[i]!));
  return { actual: f32(out).subarray(0, T * qWidth), expected };
}

function checkAttention(c: AttnCase, seed: number, what: string): Float32Array {
  const { actual, expected } = runAttention(c, seed);
  const all = new Float32Array(actual.length);
  let o = 0;
  for (const e of expected) {
    all.set(e, o);
    o += e.length;
  }
  assertClose(actual, all, 2e-5, what);
  return all;
}

const PREFILL: SeqShape[] = [{ kvLen: 5, qLen: 5 }, { kvLen: 17, qLen: 17 }, { kvLen: 1, qLen: 1 }, { kvLen: 12, qLen: 12 }];
const CHUNKED: SeqShape[] = [{ kvLen: 40, qLen: 7 }, { kvLen: 19, qLen: 19 }, { kvLen: 23, qLen: 1 }, { kvLen: 9, qLen: 4 }];
const DECODE: SeqShape[] = [{ kvLen: 1, qLen: 1 }, { kvLen: 16, qLen: 1 }, { kvLen: 17, qLen: 1 }, { kvLen: 50, qLen: 1 }];
const BATCHES = { prefill: PREFILL, chunked: CHUNKED, decode: DECODE };

test('attention: prefill, chunked prefill and decode with GQA (8 heads / 2 kv), block sizes 4 and 16', () => {
  for (const blockSize of [4, 16]) {
    for (const [name, seqs] of Object.entries(BATCHES)) {
      checkAttention({ numHeads: 8, numKvHeads: 2, headDim: 16, blockSize, seqs }, blockSize + name.length, `GQA ${name} bs${blockSize}`);
    }
  }
});

test('attention: MQA (1 kv head) and MHA with headDim 64', () => {
  for (const [name, seqs] of Object.entries(BATCHES)) {
    checkAttention({ numHeads: 4, numKvHeads: 1, headDim: 64, blockSize: 16, seqs }, 3 + name.length, `MQA ${name}`);
    checkAttention({ numHeads: 2, numKvHeads: 2, headDim: 64, blockSize: 4, seqs }, 5 + name.length, `MHA ${name}`);
  }
});

test('attention: sliding window changes the result and matches the dense masked reference', () => {
  for (const [name, seqs] of Object.entries(BATCHES)) {
    const windowed = checkAttention({ numHeads: 8, numKvHeads: 2, headDim: 16, blockSize: 4, seqs, slidingWindow: 6 }, 11, `window ${name}`);
    const full = checkAttention({ numHeads: 8, numKvHeads: 2, headDim: 16, blockSize: 4, seqs }, 11, `no window ${name}`);
    assert.ok(windowed.some((v, i) => Math.abs(v - full[i]!) > 1e-3), `window ${name} must matter`);
  }
});

test('attention: ALiBi slopes and logit softcap', () => {
  for (const [name, seqs] of Object.entries(BATCHES)) {
    const alibi = checkAttention({ numHeads: 8, numKvHeads: 8, headDim: 16, blockSize: 16, seqs, alibi: true }, 21, `alibi ${name}`);
    const plain = checkAttention({ numHeads: 8, numKvHeads: 8, headDim: 16, blockSize: 16, seqs }, 21, `plain ${name}`);
    const capped = checkAttention({ numHeads: 8, numKvHeads: 2, headDim: 64, blockSize: 4, seqs, softcap: 2, qScale: 6 }, 22, `softcap ${name}`);
    const uncapped = checkAttention({ numHeads: 8, numKvHeads: 2, headDim: 64, blockSize: 4, seqs, qScale: 6 }, 22, `uncapped ${name}`);
    if (name !== 'decode' || seqs.some((s) => s.kvLen > 1)) {
      assert.ok(alibi.some((v, i) => Math.abs(v - plain[i]!) > 1e-3), `alibi ${name} must matter`);
      assert.ok(capped.some((v, i) => Math.abs(v - uncapped[i]!) > 1e-3), `softcap ${name} must matter`);
    }
  }
  checkAttention({ numHeads: 4, numKvHeads: 2, headDim: 16, blockSize: 4, seqs: CHUNKED, alibi: true, softcap: 3, slidingWindow: 5, qScale: 4 }, 23, 'all together');
});

test('attention after ropeWriteKv equals dense attention over rotated q and k', () => {
  const r = rng(99);
  const p: RopeParams = { numHeads: 4, numKvHeads: 2, headDim: 16, rotaryDim: 16, style: 'neox' };
  const blockSize = 4, kvWidth = 32, qWidth = 64, rowWidth = 128, T = 10;
  const qkv0 = uniform(T * rowWidth, r);
  const blockTable = Int32Array.from([5, 2, 7]);
  const slots = Int32Array.from({ length: T }, (_, j) => blockTable[Math.floor(j / blockSize)]! * blockSize + (j % blockSize));
  const qkv = be.fromF32([T, rowWidth], qkv0);
  const cache: LayerKvCache = { k: be.empty([8 * blockSize, kvWidth], 'f32'), v: be.empty([8 * blockSize, kvWidth], 'f32') };
  be.ropeWriteKv(qkv, be.fromI32([T], Int32Array.from({ length: T }, (_, i) => i)), be.fromF32([16, 16], cosSinTable(16, 16)), cache, be.fromI32([T], slots), T, p);
  const out = be.empty([T, qWidth], 'f32');
  be.attention(out, qkv, cache, {
    numSeqs: 1, numTokens: T, cuSeqlensQ: be.fromI32([2], Int32Array.from([0, T])), contextLens: be.fromI32([1], Int32Array.from([T])),
    blockTables: be.fromI32([1, 3], blockTable), maxBlocksPerSeq: 3, maxSeqlenQ: T, maxSeqlenK: T, isDecode: false,
  }, { numHeads: 4, numKvHeads: 2, headDim: 16, blockSize, scale: 0.25 });

  const q = new Float32Array(T * qWidth), k = new Float32Array(T * kvWidth), v = new Float32Array(T * kvWidth);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < 4; h++) q.set(refRotate(qkv0.subarray(t * rowWidth + h * 16, t * rowWidth + (h + 1) * 16), t, 16, 'neox'), t * qWidth + h * 16);
    for (let h = 0; h < 2; h++) k.set(refRotate(qkv0.subarray(t * rowWidth + qWidth + h * 16, t * rowWidth + qWidth + (h + 1) * 16), t, 16, 'neox'), t * kvWidth + h * 16);
    v.set(qkv0.subarray(t * rowWidth + qWidth + kvWidth, (t + 1) * rowWidth), t * kvWidth);
  }
  const expected = denseAttention({ numHeads: 4, numKvHeads: 2, headDim: 16, blockSize, seqs: [] }, { kvLen: T, qLen: T }, { q, k, v });
  assertClose(f32(out), expected, 2e-5, 'rope + attention');
});

test('attention rejects a missing block and more queries than context', () => {
  const c = { numHeads: 2, numKvHeads: 1, headDim: 4, blockSize: 4 };
  const cache: LayerKvCache = { k: be.empty([16, 4], 'f32'), v: be.empty([16, 4], 'f32') };
  const meta = (contextLen: number, table: number[]): AttentionMetadata => ({
    numSeqs: 1, numTokens: 3, cuSeqlensQ: be.fromI32([2], Int32Array.from([0, 3])), contextLens: be.fromI32([1], Int32Array.from([contextLen])),
    blockTables: be.fromI32([1, 2], Int32Array.from(table)), maxBlocksPerSeq: 2, maxSeqlenQ: 3, maxSeqlenK: contextLen, isDecode: false,
  });
  const run = (m: AttentionMetadata) => be.attention(be.empty([3, 8], 'f32'), be.empty([3, 16], 'f32'), cache, m, { ...c, scale: 0.5 });
  assertInternal(() => run(meta(6, [1, -1])), /blockTables\[0\]\[1\] = -1 is outside the cache \(4 blocks\)/);
  assertInternal(() => run(meta(2, [1, -1])), /seq 0 has 3 queries but contextLens 2/);
  assertInternal(() => run(meta(10, [1, 2])), /seq 0 needs 3 blocks, block table has 2/);
});
