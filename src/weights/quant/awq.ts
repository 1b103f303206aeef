/**
 * AWQ checkpoints (AutoAWQ "gemm" version, 4-bit), as WQLinear_GEMM.from_linear writes them:
 *   qweight i32 [K, N/8]   8 codes of one input row per word, along N, in AWQ's interleaved order:
 *                          nibble i (bits 4i..4i+3) of word c holds column 8c + AWQ_PACK_ORDER[i]
 *   qzeros  i32 [G, N/8]   zero points, packed the same way (stored as they are, no offset)
 *   scales  f16 [G, N]     G = K / group_size
 * w = (q - zero) * scale. Converting to the canonical layout unpacks along N and repacks along K.
 */
import type { Checkpoint } from '../checkpoint.js';
import { optNumber, optString, optStringList, type JsonObject } from './config-fields.js';
import type { HostQuantWeight, QuantConfig, QuantFormat } from './types.js';
import { DEFAULT_GROUP_SIZE, INT4_SYM_ZERO, numGroups, unsupportedQuant } from './types.js';
import { INT4_PER_WORD, packInt4 } from './int4.js';
import { quantShapeError, readFloats, readWords, requireShape } from './tensors.js';

/** rename table: canonical part -> the suffix of `<module>.` in an AWQ checkpoint */
export const AWQ_NAMES = { qweight: 'qweight', qzeros: 'qzeros', scales: 'scales' } as const;
/** nibble i of a packed word holds column AWQ_PACK_ORDER[i] of its 8 (AutoAWQ's order_map) */
export const AWQ_PACK_ORDER: readonly number[] = [0, 2, 4, 6, 1, 3, 5, 7];

export function parseAwqConfig(qc: JsonObject): QuantConfig {
  const bits = optNumber(qc, 'bits') ?? optNumber(qc, 'w_bit');
  if (bits !== 4) throw unsupportedQuant(`AWQ with ${bits ?? 'unspecified'} bits: Peregrine loads 4-bit AWQ checkpoints`, { bits });
  const version = (optString(qc, 'version') ?? 'gemm').toLowerCase();
  if (version !== 'gemm') {
    throw unsupportedQuant(`AWQ version "${version}" is not supported: its qweight layout differs; use a "gemm" checkpoint`, { version });
  }
  const groupSize = optNumber(qc, 'group_size') ?? optNumber(qc, 'q_group_size') ?? DEFAULT_GROUP_SIZE;
  return {
    method: 'awq',
    kind: 'int4',
    groupSize: groupSize === -1 ? null : groupSize,
    symmetric: false,
    activation: 'none',
    ignore: optStringList(qc, 'modules_to_not_convert'),
    zeroOffset: 0,
  };
}

export function readAwqModule(ckpt: Checkpoint, module: string, cfg: QuantConfig): HostQuantWeight | null {
  const name = (part: keyof typeof AWQ_NAMES) => `${module}.${AWQ_NAMES[part]}`;
  if (!ckpt.has(name('qweight'))) return null;
  const qw = readWords(ckpt, name('qweight'));
  if (qw.shape.length !== 2) throw quantShapeError(qw.info, '[K, N/8]');
  const [K, cols] = qw.shape as [number, number];
  const N = cols * INT4_PER_WORD;
  if (K % INT4_PER_WORD !== 0) throw quantShapeError(qw.info, `[K, N/8] with K divisible by ${INT4_PER_WORD}`);
  const G = cfg.groupSize ?? K;
  const numG = numGroups(K, G);
  const sc = readFloats(ckpt, name('scales'));
  requireShape(sc.info, [numG, N]);
  const qz = readWords(ckpt, name('qzeros'));
  requireShape(qz.info, [numG, cols]);

  const codes = new Uint8Array(N * K);
  for (let k = 0; k < K; k++) {
    for (let c = 0; c < cols; c++) {
      const word = qw.data[k * cols + c]!;
      for (let i = 0; i < INT4_PER_WORD; i++) codes[(c * INT4_PER_WORD + AWQ_PACK_ORDER[i]!) * K + k] = (word >>> (i * 4)) & 0xf;
    }
  }
  const scales = new Float32Array(N * numG);
  const zeros = new Float32Array(N * numG);
  let symmetric = true;
  for (let g = 0; g < numG; g++) {
    for (let c = 0; c < cols; c++) {
      const word = qz.data[g * cols + c]!;
      for (let i = 0; i < INT4_PER_WORD; i++) {
        const n = c * INT4_PER_WORD + AWQ_PACK_ORDER[i]!;
        const z = (word >>> (i * 4)) & 0xf;
        zeros[n * numG + g] = z;
        scales[n * numG + g] = sc.data[g * N + n]!;
        if (z !== INT4_SYM_ZERO) symmetric = false;
      }
    }
  }
  return { kind: 'int4', shape: [N, K], groupSize: G, qweight: packInt4(codes, N, K), scales, zeros: symmetric ? null : zeros, inputScale: null };
}

export const awqFormat: QuantFormat = {
  methods: ['awq'],
  parseConfig: parseAwqConfig,
  hasModule: (ckpt, module) => ckpt.has(`${module}.${AWQ_NAMES.qweight}`),
  readModule: readAwqModule,
};
