/**
 * compressed-tensors checkpoints (llm-compressor, Neural Magic / Red Hat exports):
 * `quantization_config: {quant_method: "compressed-tensors", format, config_groups: {name:
 * {targets, weights, input_activations, format?}}, ignore: [...]}`. Supported schemes:
 * - float-quantized FP8: `weight` F8_E4M3 [N, K], `weight_scale` per tensor or per channel
 *   ([1] / [N, 1]), `input_scale` [1] when activations are static (scaled-FP8 layout);
 * - int-quantized INT8 (symmetric): `weight` I8 [N, K], `weight_scale` [N, 1] or [N, K/G];
 * - pack-quantized INT4 / INT8 (symmetric): `weight_packed` i32 [N, ceil(K*bits/32)], values
 *   + 2^(bits-1) packed along K from the low bits up, `weight_scale` [N, G], `weight_shape` [2].
 *   4-bit is the canonical int4 layout word for word; 8-bit bytes flip their top bit to int8.
 * Asymmetric pack-quantized, block / group FP8, NVFP4 and act-order are refused.
 */
import type { Checkpoint } from '../checkpoint.js';
import type { TensorToWrite } from '../safetensors-writer.js';
import { isObject, optBool, optNumber, optObject, optString, optStringList, type JsonObject } from './config-fields.js';
import type { HostQuantWeight, QuantConfig, QuantFormat, QuantKind } from './types.js';
import { bytesToWords, checkPackable, invalidQuantConfig, numGroups, unsupportedQuant, wordBytes } from './types.js';
import { isFp8Module, readFp8Module, FP8_NAMES } from './fp8-checkpoint.js';
import { numelOf, quantShapeError, readFloats, readInts, readWords, requireShape } from './tensors.js';

/** rename table: canonical part -> suffix of `<module>.` */
export const COMPRESSED_TENSORS_NAMES = {
  ...FP8_NAMES,
  weightPacked: 'weight_packed',
  weightShape: 'weight_shape',
  zeroPoint: 'weight_zero_point',
  gIdx: 'weight_g_idx',
} as const;

interface Scheme {
  readonly kind: QuantKind;
  readonly groupSize: number | null;
  readonly activation: QuantConfig['activation'];
}

export function parseCompressedTensorsConfig(qc: JsonObject): QuantConfig {
  const groups = optObject(qc, 'config_groups');
  if (!groups || Object.keys(groups).length === 0) throw invalidQuantConfig('compressed-tensors config has no "config_groups"');
  const sparsity = optObject(qc, 'sparsity_config');
  if (sparsity && optString(sparsity, 'format') !== 'dense') {
    throw unsupportedQuant(`compressed-tensors sparsity (${optString(sparsity, 'format') ?? 'unknown format'}) is not supported`);
  }
  const topFormat = optString(qc, 'format');
  const schemes = Object.entries(groups).map(([name, g]) => {
    if (!isObject(g)) throw invalidQuantConfig(`config group "${name}" is not an object`);
    return parseScheme(name, g, optString(g, 'format') ?? topFormat);
  });
  const first = schemes[0]!;
  return {
    method: 'compressed-tensors',
    kind: first.kind,
    groupSize: first.groupSize,
    symmetric: true,
    activation: first.activation,
    ignore: optStringList(qc, 'ignore'),
    zeroOffset: 0,
  };
}

function parseScheme(name: string, g: JsonObject, format: string | undefined): Scheme {
  const w = optObject(g, 'weights');
  if (!w) throw unsupportedQuant(`compressed-tensors group "${name}" quantizes no weights`, { group: name });
  const type = optString(w, 'type') ?? 'int';
  const bits = optNumber(w, 'num_bits');
  const strategy = optString(w, 'strategy') ?? 'tensor';
  const what = `compressed-tensors group "${name}" (${type}${bits}, strategy ${strategy}, format ${format ?? 'unset'})`;
  if (optBool(w, 'symmetric') === false) throw unsupportedQuant(`${what}: asymmetric weights are not supported`, { group: name });
  const actorder = w['actorder'];
  if (actorder === true || actorder === 'group') throw unsupportedQuant(`${what}: act-order groups (weight_g_idx) are not supported`, { group: name });
  if (type === 'float' && bits === 8 && (strategy === 'tensor' || strategy === 'channel')) {
    const act = optObject(g, 'input_activations');
    const isStatic = act !== undefined && optBool(act, 'dynamic') === false;
    if (isStatic && optString(act, 'strategy') !== 'tensor') throw unsupportedQuant(`${what}: static activations must be per tensor`, { group: name });
    return { kind: 'fp8', groupSize: null, activation: isStatic ? 'static' : 'dynamic' };
  }
  if (type === 'int' && (bits === 8 || bits === 4) && (strategy === 'channel' || strategy === 'group')) {
    if (bits === 4 && format !== 'pack-quantized') throw unsupportedQuant(`${what}: 4-bit weights must be pack-quantized`, { group: name });
    const groupSize = strategy === 'group' ? optNumber(w, 'group_size') : null;
    if (strategy === 'group' && !groupSize) throw invalidQuantConfig(`${what} has no "group_size"`, { group: name });
    return { kind: bits === 8 ? 'int8' : 'int4', groupSize: groupSize ?? null, activation: 'none' };
  }
  throw unsupportedQuant(`${what} is not supported (FP8 per tensor / channel, INT8 per channel / group, packed INT4 per group / channel)`, { group: name });
}

export function readCompressedTensorsModule(ckpt: Checkpoint, module: string, cfg: QuantConfig): HostQuantWeight | null {
  const name = (part: keyof typeof COMPRESSED_TENSORS_NAMES) => `${module}.${COMPRESSED_TENSORS_NAMES[part]}`;
  if (ckpt.has(name('gIdx'))) throw unsupportedQuant(`${ckpt.info(name('gIdx')).file}: '${name('gIdx')}': act-order groups are not supported`, { tensor: name('gIdx') });
  if (ckpt.has(name('weightPacked'))) return readPacked(ckpt, module, cfg);
  if (isFp8Module(ckpt, module)) return readFp8Module(ckpt, module);
  if (ckpt.has(name('weight')) && ckpt.info(name('weight')).dtype === 'I8') return readInt8(ckpt, module, cfg);
  return null;
}

/** pack-quantized: weight_packed + weight_scale (+ weight_shape) */
function readPacked(ckpt: Checkpoint, module: string, cfg: QuantConfig): HostQuantWeight {
  const name = (part: keyof typeof COMPRESSED_TENSORS_NAMES) => `${module}.${COMPRESSED_TENSORS_NAMES[part]}`;
  if (ckpt.has(name('zeroPoint'))) throw unsupportedQuant(`'${name('zeroPoint')}': asymmetric pack-quantized weights are not supported`, { tensor: name('zeroPoint') });
  const packed = readWords(ckpt, name('weightPacked'));
  if (packed.shape.length !== 2) throw quantShapeError(packed.info, '[N, packed K]');
  const [N, cols] = packed.shape as [number, number];
  const shape = ckpt.has(name('weightShape')) ? readInts(ckpt, name('weightShape')).data : [N, cols * 8];
  const K = shape[1]!;
  if (shape.length !== 2 || shape[0] !== N) throw quantShapeError(packed.info, `rows matching weight_shape [${shape.join(', ')}]`);
  const bits = (cols * 32) / K;
  if (bits !== 4 && bits !== 8) throw quantShapeError(packed.info, `[${N}, ${K / 8}] (4-bit) or [${N}, ${K / 4}] (8-bit) for weight_shape [${N}, ${K}]`);
  const kind: QuantKind = bits === 4 ? 'int4' : 'int8';
  checkPackable(kind, N, K, name('weightPacked'));
  const { scales, groupSize } = readGroupScales(ckpt, name('weightScale'), N, K, cfg);
  let qweight = packed.data;
  if (kind === 'int8') {
    qweight = new Int32Array(packed.data.length);
    for (let i = 0; i < qweight.length; i++) qweight[i] = packed.data[i]! ^ 0x80808080; // offset binary -> two's complement
  }
  return { kind, shape: [N, K], groupSize, qweight, scales, zeros: null, inputScale: null };
}

/** int-quantized: weight I8 [N, K] + weight_scale */
function readInt8(ckpt: Checkpoint, module: string, cfg: QuantConfig): HostQuantWeight {
  const name = (part: keyof typeof COMPRESSED_TENSORS_NAMES) => `${module}.${COMPRESSED_TENSORS_NAMES[part]}`;
  const info = ckpt.info(name('weight'));
  if (info.shape.length !== 2) throw quantShapeError(info, '[N, K]');
  const [N, K] = info.shape as [number, number];
  checkPackable('int8', N, K, name('weight'));
  if (ckpt.has(name('zeroPoint')) && readInts(ckpt, name('zeroPoint')).data.some((z) => z !== 0)) {
    throw unsupportedQuant(`'${name('zeroPoint')}': asymmetric INT8 weights are not supported`, { tensor: name('zeroPoint') });
  }
  const { scales, groupSize } = readGroupScales(ckpt, name('weightScale'), N, K, cfg);
  const bytes = ckpt.read(name('weight')).bytes;
  return { kind: 'int8', shape: [N, K], groupSize, qweight: bytesToWords(bytes), scales, zeros: null, inputScale: null };
}

/**
 * weight_scale [N, 1] (per channel) or [N, G]. The group size is the config's when it gives G groups
 * (configs with several schemes name only the first one's), else K / G.
 */
function readGroupScales(ckpt: Checkpoint, scaleName: string, N: number, K: number, cfg: QuantConfig): { scales: Float32Array; groupSize: number } {
  const sc = readFloats(ckpt, scaleName);
  const numG = numelOf(sc.shape) / N;
  if (!Number.isInteger(numG) || numG < 1) throw quantShapeError(sc.info, `[${N}, groups]`);
  const fromConfig = cfg.groupSize !== null && numGroups(K, cfg.groupSize) === numG ? cfg.groupSize : null;
  const groupSize = numG === 1 ? K : fromConfig ?? K / numG;
  if (!Number.isInteger(groupSize)) throw quantShapeError(sc.info, `[${N}, ${numGroups(K, cfg.groupSize ?? K)}]`);
  requireShape(sc.info, [N, numG]);
  return { scales: sc.data, groupSize };
}

export const compressedTensorsFormat: QuantFormat = {
  methods: ['compressed-tensors'],
  parseConfig: parseCompressedTensorsConfig,
  hasModule: (ckpt, module) =>
    ckpt.has(`${module}.${COMPRESSED_TENSORS_NAMES.weightPacked}`) ||
    isFp8Module(ckpt, module) ||
    (ckpt.has(`${module}.weight`) && ckpt.info(`${module}.weight`).dtype === 'I8'),
  readModule: readCompressedTensorsModule,
};

// ---- writing (peregrine build) ------------------------------------------------------

/** fp8 -> float-quantized tensors: weight F8_E4M3 [N, K], weight_scale f32 [1] or [N, 1] */
export function fp8ToCompressedTensors(module: string, h: HostQuantWeight): Record<string, TensorToWrite> {
  const [N, K] = h.shape;
  return {
    [`${module}.${FP8_NAMES.weight}`]: { dtype: 'F8_E4M3', shape: [N, K], data: wordBytes(h.qweight) },
    [`${module}.${FP8_NAMES.weightScale}`]: { dtype: 'F32', shape: h.scales.length === 1 ? [1] : [N, 1], data: f32Bytes(h.scales) },
  };
}

/** int8 -> pack-quantized 8-bit: weight_packed i32 [N, K/4] (values + 128), weight_scale f32 [N, G], weight_shape i64 [2] */
export function int8ToCompressedTensors(module: string, h: HostQuantWeight): Record<string, TensorToWrite> {
  const [N, K] = h.shape;
  const packed = new Int32Array(h.qweight.length);
  for (let i = 0; i < packed.length; i++) packed[i] = h.qweight[i]! ^ 0x80808080;
  const shape = new BigInt64Array([BigInt(N), BigInt(K)]);
  return {
    [`${module}.${COMPRESSED_TENSORS_NAMES.weightPacked}`]: { dtype: 'I32', shape: [N, K / 4], data: wordBytes(packed) },
    [`${module}.${COMPRESSED_TENSORS_NAMES.weightScale}`]: { dtype: 'F32', shape: [N, numGroups(K, h.groupSize)], data: f32Bytes(h.scales) },
    [`${module}.${COMPRESSED_TENSORS_NAMES.weightShape}`]: { dtype: 'I64', shape: [2], data: new Uint8Array(shape.buffer) },
  };
}

/** quantization_config for what `peregrine build` writes: fp8 (float-quantized, dynamic per-token activations) or int8 (W8A16). */
export function compressedTensorsConfig(kind: 'fp8' | 'int8', opts: { fp8Scale?: 'tensor' | 'channel'; groupSize?: number | null }, ignore: readonly string[]): JsonObject {
  const fp8 = kind === 'fp8';
  const grouped = !fp8 && opts.groupSize !== undefined && opts.groupSize !== null;
  const weights = fp8
    ? { num_bits: 8, type: 'float', strategy: opts.fp8Scale ?? 'tensor', symmetric: true, dynamic: false, group_size: null }
    : { num_bits: 8, type: 'int', strategy: grouped ? 'group' : 'channel', symmetric: true, dynamic: false, group_size: grouped ? opts.groupSize : null };
  const inputActivations = fp8 ? { num_bits: 8, type: 'float', strategy: 'token', symmetric: true, dynamic: true } : null;
  const format = fp8 ? 'float-quantized' : 'pack-quantized';
  return {
    quant_method: 'compressed-tensors',
    format,
    quantization_status: 'compressed',
    config_groups: { group_0: { targets: ['Linear'], weights, input_activations: inputActivations, output_activations: null, format } },
    ignore: [...ignore],
    kv_cache_scheme: null,
    quantizer: 'peregrine-rtn',
  };
}

function f32Bytes(a: Float32Array): Uint8Array {
  const copy = Float32Array.from(a);
  return new Uint8Array(copy.buffer);
}
