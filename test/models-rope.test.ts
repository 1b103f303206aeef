import { test } from 'node:test';
import assert from 'node:assert/strict';
import { alibiSlopes, buildCosSinTable, computeInvFreq } from '../src/models/rope.js';
import type { RopeSpec } from '../src/models/spec.js';

// Expected numbers below were computed separately (Python, float64) from the formulas of
// transformers' modeling_rope_utils.py; `close` allows for float64 rounding only.
function close(actual: number, expected: number, rel = 1e-12, label = ''): void {
  assert.ok(Math.abs(actual - expected) <= rel * Math.max(Math.abs(expected), 1e-300), `${label}: ${actual} != ${expected}`);
}

/** Reference table: row p = [cos(p f_j) s ..., sin(p f_j) s ...] in float64. */
function refTable(invFreq: ArrayLike<number>, maxPositions: number, s = 1): number[][] {
  const rows: number[][] = [];
  for (let p = 0; p < maxPositions; p++) {
    const fr = Array.from(invFreq, (f) => p * f);
    rows.push([...fr.map((a) => Math.cos(a) * s), ...fr.map((a) => Math.sin(a) * s)]);
  }
  return rows;
}

function assertTable(table: Float32Array, ref: number[][], label: string): void {
  const width = ref[0]!.length;
  assert.equal(table.length, ref.length * width, `${label}: size`);
  for (let p = 0; p < ref.length; p++) {
    for (let j = 0; j < width; j++) {
      // f32 storage: one rounding of the float64 value
      const want = Math.fround(ref[p]![j]!);
      assert.ok(Math.abs(table[p * width + j]! - want) <= 1e-7, `${label}: row ${p} col ${j}: ${table[p * width + j]} != ${want}`);
    }
  }
}

const base = (over: Partial<RopeSpec>): RopeSpec => ({ type: 'default', theta: 10000, rotaryDim: 8, style: 'neox', factor: 1, ...over });

test('default RoPE: invFreq = theta^(-2i/d) and the cos|sin layout', () => {
  const rope = base({ rotaryDim: 8 });
  const { invFreq, attentionScaling } = computeInvFreq(rope, 16);
  assert.equal(attentionScaling, 1);
  assert.equal(invFreq.length, 4);
  [1, 0.1, 0.01, 0.001].forEach((want, i) => close(invFreq[i]!, want, 1e-14, `invFreq[${i}]`));
  const table = buildCosSinTable(rope, 16);
  assertTable(table, refTable([1, 0.1, 0.01, 0.001], 16), 'default');
  // row 3: cos(3*1) first, sin(3*1) at rotaryDim/2
  close(table[3 * 8]!, Math.fround(Math.cos(3)), 1e-7);
  close(table[3 * 8 + 4]!, Math.fround(Math.sin(3)), 1e-7);
});

test('partial rotary: the table is rotaryDim wide', () => {
  const rope = base({ rotaryDim: 4, theta: 10000 });
  assert.equal(computeInvFreq(rope, 4).invFreq.length, 2);
  assert.equal(buildCosSinTable(rope, 4).length, 4 * 4);
});

test('linear scaling divides every frequency by factor', () => {
  const rope = base({ type: 'linear', factor: 4, rotaryDim: 16, theta: 10000 });
  const plain = computeInvFreq(base({ rotaryDim: 16 }), 32).invFreq;
  const { invFreq, attentionScaling } = computeInvFreq(rope, 32);
  assert.equal(attentionScaling, 1);
  for (let i = 0; i < 8; i++) close(invFreq[i]!, plain[i]! / 4, 1e-15, `i=${i}`);
  assertTable(buildCosSinTable(rope, 32), refTable(Array.from(plain, (f) => f / 4), 32), 'linear');
});

test('llama3: high band kept, low band / factor, middle band smoothed (factor 8, 1/4, 8192, theta 5e5, d 128)', () => {
  const rope = base({
    type: 'llama3', theta: 500000, rotaryDim: 128, factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192,
  });
  const { invFreq, attentionScaling } = computeInvFreq(rope, 1);
  assert.equal(attentionScaling, 1);
  assert.equal(invFreq.length, 64);
  const expected: Array<[number, number]> = [
    // wavelength < 2048: unchanged
    [0, 1.0],
    [10, 0.12868737343265052],
    [28, 0.0032114459947525913],
    // 2048 <= wavelength <= 8192: (1-s) f/8 + s f, s = (8192/wavelen - 1)/3
    [29, 0.002166570763503359],
    [31, 0.0008567514129196321],
    [34, 0.00017850781276799638],
    // wavelength > 8192: f / 8
    [35, 9.556212353964683e-5],
    [40, 3.428102195952591e-5],
    [63, 3.068925988914511e-7],
  ];
  for (const [i, want] of expected) close(invFreq[i]!, want, 1e-12, `invFreq[${i}]`);
  assertTable(buildCosSinTable(rope, 64), refTable(invFreq, 64), 'llama3');
});

test('yarn: ramp between interpolation and extrapolation, mscale attention factor (Qwen2.5 style)', () => {
  const rope = base({ type: 'yarn', theta: 1e6, rotaryDim: 128, factor: 4, originalMaxPositionEmbeddings: 32768 });
  const { invFreq, attentionScaling } = computeInvFreq(rope, 1);
  close(attentionScaling, 1.138629436111989, 1e-14, 'attention factor 0.1 ln 4 + 1');
  // beta_fast 32 / beta_slow 1 -> ramp over dims [23, 40] after floor/ceil
  const expected: Array<[number, number]> = [
    [0, 1.0],
    [23, 0.006978305848598663],
    [24, 0.005375321490790102],
    [30, 0.0010643609812470017],
    [39, 6.490394320837028e-5],
    [40, 4.445698525097307e-5],
    [63, 3.102344401879299e-7],
  ];
  for (const [i, want] of expected) close(invFreq[i]!, want, 1e-12, `invFreq[${i}]`);
  // cos/sin carry the attention factor
  const table = buildCosSinTable(rope, 8);
  assertTable(table, refTable(invFreq, 8, attentionScaling), 'yarn');
  close(table[0]!, Math.fround(attentionScaling), 1e-7, 'cos(0) * s');
});

test('yarn: truncate=false keeps fractional ramp bounds', () => {
  const rope = base({ type: 'yarn', theta: 1e6, rotaryDim: 128, factor: 4, originalMaxPositionEmbeddings: 32768, truncate: false });
  const { invFreq } = computeInvFreq(rope, 1);
  const expected: Array<[number, number]> = [
    [23, 0.006978305848598663],
    [24, 0.0055172704751341225],
    [30, 0.0010792377416765538],
    [39, 6.187806812450695e-5],
    [40, 4.445698525097307e-5],
  ];
  for (const [i, want] of expected) close(invFreq[i]!, want, 1e-12, `invFreq[${i}]`);
});

test('yarn: attention factor from mscale / mscale_all_dim, or given explicitly', () => {
  const ds = base({ type: 'yarn', theta: 10000, rotaryDim: 64, factor: 40, originalMaxPositionEmbeddings: 4096, mscale: 1, mscaleAllDim: 0.5 });
  close(computeInvFreq(ds, 1).attentionScaling, 1.1557219901962608, 1e-14, 'mscale ratio');
  const equal = { ...ds, mscaleAllDim: 1 };
  assert.equal(computeInvFreq(equal, 1).attentionScaling, 1);
  const onlyMscale = { ...ds, mscaleAllDim: undefined };
  close(computeInvFreq(onlyMscale, 1).attentionScaling, 0.1 * Math.log(40) + 1, 1e-14, 'mscale alone is ignored');
  const explicit = { ...ds, attentionFactor: 0.75 };
  assert.equal(computeInvFreq(explicit, 1).attentionScaling, 0.75);
});

test('dynamic NTK: default RoPE inside the original context, fixed-length NTK base beyond it', () => {
  const rope = base({ type: 'dynamic', theta: 10000, rotaryDim: 64, factor: 2, originalMaxPositionEmbeddings: 2048 });
  const plain = computeInvFreq(base({ rotaryDim: 64 }), 1).invFreq;
  // a table that fits the original context is plain RoPE
  assert.deepEqual(computeInvFreq(rope, 2048).invFreq, plain);
  assert.deepEqual(buildCosSinTable(rope, 64), buildCosSinTable(base({ rotaryDim: 64 }), 64));
  // base' = 1e4 * (2 * 8192 / 2048 - 1)^(64/62) = 74534.83031811893
  const long = computeInvFreq(rope, 8192).invFreq;
  close(long[5]!, 0.173258226475498, 1e-12, 'invFreq[5] for 8192');
  close(long[5]!, 1 / 74534.83031811893 ** (10 / 64), 1e-12);
  const table = buildCosSinTable(rope, 8192);
  const row = (p: number) => Array.from(table.subarray(p * 64, (p + 1) * 64));
  const plainRows = refTable(plain, 2048);
  const longRows = refTable(long, 8192);
  for (const p of [0, 1, 777, 2047]) assert.deepEqual(row(p), plainRows[p]!.map(Math.fround), `row ${p} is default RoPE`);
  for (const p of [2048, 5000, 8191]) assert.deepEqual(row(p), longRows[p]!.map(Math.fround), `row ${p} uses the NTK base`);
});

test('alibiSlopes: power-of-2 and non-power-of-2 head counts (BLOOM formula)', () => {
  assert.deepEqual(Array.from(alibiSlopes(8)), [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625]);
  const twelve = Array.from(alibiSlopes(12));
  assert.deepEqual(twelve.slice(0, 8), [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625]);
  const extra = [0.7071067811865476, 0.35355339059327384, 0.17677669529663695, 0.08838834764831849];
  twelve.slice(8).forEach((s, i) => assert.equal(s, Math.fround(extra[i]!)));
  // 32 heads: 2^(-8/32 * k)
  const s32 = alibiSlopes(32);
  close(s32[0]!, Math.fround(2 ** -0.25), 1e-7);
  close(s32[31]!, Math.fround(2 ** -8), 1e-7);
});
