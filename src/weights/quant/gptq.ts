/**
 * GPTQ checkpoints (AutoGPTQ / GPTQModel / optimum), 4-bit, `desc_act: false`:
 *   qweight i32 [K/8, N]   8 codes of one column per word, along K: k = 8 * row + i in bits 4i..4i+3
 *   qzeros  i32 [G, N/8]   8 zero points per word, along N (same nibble order)
 *   scales  f16 [G, N]     G = ceil(K / group_size)
 *   g_idx   i32 [K]        group of each input; must be k / group_size (anything else is act-order)
 * w = (q - zero) * scale. checkpoint_format "gptq" (v1, the common one) stores zero - 1 (so a
 * symmetric zero 8 is stored as 7, 0x77777777 per word); "gptq_v2" stores the zero itself.
 * Converting to the canonical [N, K/8] layout transposes words; nibbles keep their order.
 * Layout as AutoGPTQ's QuantLinear.pack writes it (auto_gptq/nn_modules/qlinear).
 */
import type { Checkpoint } from '../checkpoint.js';
import type { TensorToWrite } from '../safetensors-writer.js';
import { f32ToF16 } from '../dtype.js';
import { isObject, optBool, optNumber, optString, optStringList, type JsonObject } from './config-fields.js';
import type { HostQuantWeight, QuantConfig, QuantFormat } from './types.js';
import { DEFAULT_GROUP_SIZE, INT4_SYM_ZERO, numGroups, unsupportedQuant, wordBytes } from './types.js';
import { INT4_PER_WORD } from './int4.js';
import { quantShapeError, readFloats, readInts, readWords, requireShape, type Read } from './tensors.js';

/** rename table: canonical part -> the suffix of `<module>.` in a GPTQ checkpoint */
export const GPTQ_NAMES = { qweight: 'qweight', qzeros: 'qzeros', scales: 'scales', gIdx: 'g_idx' } as const;
const V1_ZERO_OFFSET = 1;

export function parseGptqConfig(qc: JsonObject): QuantConfig {
  const bits = optNumber(qc, 'bits') ?? optNumber(qc, 'w_bit');
  if (bits !== 4) throw unsupportedQuant(`GPTQ with ${bits ?? 'unspecified'} bits: Peregrine loads 4-bit GPTQ checkpoints`, { bits });
  if (optBool(qc, 'desc_act') === true) {
    throw unsupportedQuant('GPTQ with "desc_act": true (act-order) is not supported: its groups are permuted along K; use a desc_act false checkpoint', { desc_act: true });
  }
  const format = (optString(qc, 'checkpoint_format') ?? 'gptq').toLowerCase();
  if (format !== 'gptq' && format !== 'gptq_v2') {
    throw unsupportedQuant(`GPTQ checkpoint_format "${format}" is not supported (only "gptq" and "gptq_v2")`, { checkpoint_format: format });
  }
  const dynamic = qc['dynamic'];
  if (isObject(dynamic) && Object.keys(dynamic).length > 0) {
    throw unsupportedQuant('GPTQ "dynamic" per-module overrides are not supported', { dynamic: Object.keys(dynamic) });
  }
  const groupSize = optNumber(qc, 'group_size') ?? DEFAULT_GROUP_SIZE;
  return {
    method: 'gptq',
    kind: 'int4',
    groupSize: groupSize === -1 ? null : groupSize,
    symmetric: optBool(qc, 'sym') ?? true,
    activation: 'none',
    ignore: optStringList(qc, 'modules_to_not_convert'),
    zeroOffset: format === 'gptq' ? V1_ZERO_OFFSET : 0,
  };
}

export function readGptqModule(ckpt: Checkpoint, module: string, cfg: QuantConfig): HostQuantWeight | null {
  const name = (part: keyof typeof GPTQ_NAMES) => `${module}.${GPTQ_NAMES[part]}`;
  if (!ckpt.has(name('qweight'))) return null;
  const qw = readWords(ckpt, name('qweight'));
  if (qw.shape.length !== 2) throw quantShapeError(qw.info, '[K/8, N]');
  const [rows, N] = qw.shape as [number, number];
  const K = rows * INT4_PER_WORD;
  const G = cfg.groupSize ?? K;
  const numG = numGroups(K, G);
  if (N % INT4_PER_WORD !== 0) throw quantShapeError(qw.info, `[K/8, N] with N divisible by ${INT4_PER_WORD}`);
  const sc = readFloats(ckpt, name('scales'));
  requireShape(sc.info, [numG, N]);
  const qz = readWords(ckpt, name('qzeros'));
  requireShape(qz.info, [numG, N / INT4_PER_WORD]);
  if (ckpt.has(name('gIdx'))) checkTrivialGroups(readInts(ckpt, name('gIdx')), K, G);

  // qweight [K/8, N] -> [N, K/8]: word j of column n is word n of row j
  const qweight = new Int32Array(N * rows);
  for (let j = 0; j < rows; j++) for (let n = 0; n < N; n++) qweight[n * rows + j] = qw.data[j * N + n]!;
  const scales = new Float32Array(N * numG);
  const zeros = new Float32Array(N * numG);
  let symmetric = true;
  for (let g = 0; g < numG; g++) {
    for (let n = 0; n < N; n++) {
      scales[n * numG + g] = sc.data[g * N + n]!;
      const z = ((qz.data[g * (N / INT4_PER_WORD) + (n >>> 3)]! >>> ((n & 7) * 4)) & 0xf) + cfg.zeroOffset;
      zeros[n * numG + g] = z;
      if (z !== INT4_SYM_ZERO) symmetric = false;
    }
  }
  return { kind: 'int4', shape: [N, K], groupSize: G, qweight, scales, zeros: symmetric ? null : zeros, inputScale: null };
}

/** g_idx must be the plain k / groupSize (desc_act false); act-order checkpoints are refused by name. */
function checkTrivialGroups(gIdx: Read<number[]>, K: number, G: number): void {
  if (gIdx.data.length !== K) throw quantShapeError(gIdx.info, `[${K}]`);
  const bad = gIdx.data.findIndex((g, k) => g !== Math.floor(k / G));
  if (bad >= 0) {
    throw unsupportedQuant(
      `${gIdx.info.file}: tensor '${gIdx.info.name}' maps input ${bad} to group ${gIdx.data[bad]} (not ${Math.floor(bad / G)}): ` +
        'act-order (desc_act) GPTQ checkpoints are not supported',
      { tensor: gIdx.info.name, file: gIdx.info.file, index: bad },
    );
  }
}

export const gptqFormat: QuantFormat = {
  methods: ['gptq'],
  parseConfig: parseGptqConfig,
  hasModule: (ckpt, module) => ckpt.has(`${module}.${GPTQ_NAMES.qweight}`),
  readModule: readGptqModule,
};

/**
 * The GPTQ (v1) tensors of a canonical int4 weight, as AutoGPTQ writes them: what `peregrine build
 * --quantization int4` stores. Scales must already be f16 values and zero points 1..16 (quantizeInt4
 * with f16Scales and minZero 1), since v1 stores zero - 1 in a nibble.
 */
export function int4ToGptq(module: string, h: HostQuantWeight): Record<string, TensorToWrite> {
  const [N, K] = h.shape;
  const rows = K / INT4_PER_WORD;
  const numG = numGroups(K, h.groupSize);
  if (h.kind !== 'int4' || N % INT4_PER_WORD !== 0) throw unsupportedQuant(`'${module}': GPTQ stores int4 weights with N divisible by ${INT4_PER_WORD}, got ${h.kind} [${N}, ${K}]`);
  const qweight = new Int32Array(rows * N);
  for (let n = 0; n < N; n++) for (let j = 0; j < rows; j++) qweight[j * N + n] = h.qweight[n * rows + j]!;
  const qzeros = new Int32Array(numG * (N / INT4_PER_WORD));
  const scales = new Uint16Array(numG * N);
  for (let g = 0; g < numG; g++) {
    for (let n = 0; n < N; n++) {
      const z = (h.zeros ? h.zeros[n * numG + g]! : INT4_SYM_ZERO) - V1_ZERO_OFFSET;
      if (z < 0 || z > 0xf) throw unsupportedQuant(`'${module}': zero point ${z + V1_ZERO_OFFSET} (row ${n}, group ${g}) does not fit GPTQ v1 (1..16)`);
      qzeros[g * (N / INT4_PER_WORD) + (n >>> 3)]! |= (z & 0xf) << ((n & 7) * 4);
      scales[g * N + n] = f32ToF16(h.scales[n * numG + g]!);
    }
  }
  const gIdx = Int32Array.from({ length: K }, (_, k) => Math.floor(k / h.groupSize));
  return {
    [`${module}.${GPTQ_NAMES.qweight}`]: { dtype: 'I32', shape: [rows, N], data: wordBytes(qweight) },
    [`${module}.${GPTQ_NAMES.qzeros}`]: { dtype: 'I32', shape: [numG, N / INT4_PER_WORD], data: wordBytes(qzeros) },
    [`${module}.${GPTQ_NAMES.scales}`]: { dtype: 'F16', shape: [numG, N], data: new Uint8Array(scales.buffer) },
    [`${module}.${GPTQ_NAMES.gIdx}`]: { dtype: 'I32', shape: [K], data: wordBytes(gIdx) },
  };
}

/** quantization_config of a GPTQ checkpoint written by `peregrine build` (round to nearest, no calibration). */
export function gptqConfig(groupSize: number, symmetric: boolean, ignore: readonly string[]): JsonObject {
  return {
    quant_method: 'gptq',
    bits: 4,
    group_size: groupSize,
    desc_act: false,
    sym: symmetric,
    static_groups: false,
    true_sequential: true,
    damp_percent: 0.01,
    checkpoint_format: 'gptq',
    lm_head: !ignore.includes('lm_head'),
    modules_to_not_convert: [...ignore],
    quantizer: 'peregrine-rtn',
  };
}
