/**
 * A tensor-parallel rank's slice of a quantized linear weight (host form), as sliceTensor does for
 * plain ones: rows (dim 0: column-parallel qkv / gate_up, several ranges allowed) keep their codes,
 * scales and zeros; columns (dim 1: row-parallel o / down) keep whole packed words and whole
 * scale groups, so each range must start and end on a group (and word) boundary. Per-tensor and
 * per-channel scales stay as they are (per channel: the group is the rank's whole K).
 */
import type { TensorSlice } from '../../models/weight-transform.js';
import { gatherRows } from './load.js';
import { isPerTensor, numGroups, unsupportedQuant, VALUES_PER_WORD, type HostQuantWeight } from './types.js';

export function sliceQuantWeight(h: HostQuantWeight, s: TensorSlice, name: string): HostQuantWeight {
  const [N, K] = h.shape;
  const size = s.dim === 0 ? N : s.dim === 1 ? K : -1;
  if (size < 0) throw unsupportedQuant(`${name}: a quantized linear has no dim ${s.dim} to split for tensor parallelism`, { name });
  for (const [a, b] of s.ranges) {
    if (!(Number.isInteger(a) && Number.isInteger(b) && a >= 0 && a < b && b <= size)) {
      throw unsupportedQuant(`${name}: has ${size} entries in dim ${s.dim}, cannot take [${a}, ${b})`, { name });
    }
  }
  return s.dim === 0 ? sliceRows(h, s.ranges) : sliceColumns(h, s.ranges, name);
}

function sliceRows(h: HostQuantWeight, ranges: TensorSlice['ranges']): HostQuantWeight {
  return gatherRows(h, ranges.flatMap(([a, b]) => Array.from({ length: b - a }, (_, i) => a + i)));
}

function sliceColumns(h: HostQuantWeight, ranges: TensorSlice['ranges'], name: string): HostQuantWeight {
  const [N, K] = h.shape;
  const vpw = VALUES_PER_WORD[h.kind];
  const perChannel = h.groupSize >= K;
  const G = h.groupSize;
  for (const [a, b] of ranges) {
    const unit = perChannel ? vpw : Math.max(G, vpw);
    if (a % unit !== 0 || b % unit !== 0) {
      throw unsupportedQuant(`${name}: columns [${a}, ${b}) do not fall on ${perChannel ? `${vpw}-value words` : `groups of ${G}`}; this tensor-parallel split needs K / tp to be a multiple of ${unit}`, { name, groupSize: G });
    }
  }
  const K2 = ranges.reduce((n, [a, b]) => n + (b - a), 0);
  const wpr = K / vpw, wpr2 = K2 / vpw;
  const qweight = new Int32Array(N * wpr2);
  const numG = numGroups(K, G), numG2 = perChannel ? 1 : K2 / G;
  const groups = (src: Float32Array) => {
    const out = new Float32Array(N * numG2);
    for (let n = 0; n < N; n++) {
      let o = n * numG2;
      for (const [a, b] of ranges) {
        out.set(src.subarray(n * numG + a / G, n * numG + b / G), o);
        o += (b - a) / G;
      }
    }
    return out;
  };
  for (let n = 0; n < N; n++) {
    let o = n * wpr2;
    for (const [a, b] of ranges) {
      qweight.set(h.qweight.subarray(n * wpr + a / vpw, n * wpr + b / vpw), o);
      o += (b - a) / vpw;
    }
  }
  const keepScales = isPerTensor(h) || perChannel;
  return {
    ...h,
    shape: [N, K2],
    groupSize: perChannel ? K2 : G,
    qweight,
    scales: keepScales ? h.scales : groups(h.scales),
    zeros: h.zeros ? (perChannel ? h.zeros : groups(h.zeros)) : null,
  };
}
