/**
 * FP8 linears as the common pre-quantized checkpoints store them (compressed-tensors, ModelOpt,
 * vLLM / AutoFP8 "fp8", FBGEMM "fbgemm_fp8"):
 *   weight       F8_E4M3 [N, K]
 *   weight_scale f32/bf16 [] or [1] (per tensor), [N] or [N, 1] (per channel)
 *   input_scale  f32 [] or [1] (static activation scale; absent = dynamic per token)
 * w = weight * weight_scale. Also parses the "fp8" and "fbgemm_fp8" quantization_configs.
 */
import type { Checkpoint } from '../checkpoint.js';
import { PeregrineError } from '../../errors.js';
import { optString, optStringList, type JsonObject } from './config-fields.js';
import type { HostQuantWeight, QuantConfig, QuantFormat } from './types.js';
import { bytesToWords, checkPackable, unsupportedQuant } from './types.js';
import { numelOf, quantShapeError, readFloats } from './tensors.js';

/** rename table of the scaled-FP8 layout: canonical part -> suffix of `<module>.` */
export const FP8_NAMES = { weight: 'weight', weightScale: 'weight_scale', inputScale: 'input_scale' } as const;

/** true when `<module>.weight` is stored as FP8 */
export function isFp8Module(ckpt: Checkpoint, module: string): boolean {
  const name = `${module}.${FP8_NAMES.weight}`;
  return ckpt.has(name) && ckpt.info(name).dtype.startsWith('F8_');
}

/** The module as a canonical fp8 weight, or null when its weight is not FP8. */
export function readFp8Module(ckpt: Checkpoint, module: string): HostQuantWeight | null {
  if (!isFp8Module(ckpt, module)) return null;
  const wName = `${module}.${FP8_NAMES.weight}`;
  const info = ckpt.info(wName);
  if (info.dtype !== 'F8_E4M3') {
    throw new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', `${info.file}: tensor '${wName}' is ${info.dtype}; FP8 weights must be E4M3 (float8_e4m3fn)`, {
      file: info.file, tensor: wName, dtype: info.dtype,
    });
  }
  if (info.shape.length !== 2) throw quantShapeError(info, '[N, K]');
  const [N, K] = info.shape as [number, number];
  checkPackable('fp8', N, K, wName);
  const ws = readFloats(ckpt, `${module}.${FP8_NAMES.weightScale}`);
  const numScales = numelOf(ws.shape);
  if (numScales !== 1 && numScales !== N) {
    throw unsupportedQuant(
      `${ws.info.file}: tensor '${ws.info.name}' [${ws.shape.join(', ')}] holds ${numScales} scales for a [${N}, ${K}] weight: ` +
        'only per-tensor (1) and per-channel (N) FP8 weight scales are supported (block-wise scales are not)',
      { tensor: ws.info.name, file: ws.info.file, shape: ws.shape },
    );
  }
  const isName = `${module}.${FP8_NAMES.inputScale}`;
  let inputScale: number | null = null;
  if (ckpt.has(isName)) {
    const is = readFloats(ckpt, isName);
    if (is.data.length < 1) throw quantShapeError(is.info, '[] or [1]');
    inputScale = Math.max(...is.data);
  }
  return { kind: 'fp8', shape: [N, K], groupSize: K, qweight: bytesToWords(ckpt.read(wName).bytes), scales: ws.data, zeros: null, inputScale };
}

/** quant_method "fp8" (vLLM / AutoFP8) and "fbgemm_fp8" (per-channel weights, dynamic per-token activations). */
export function parseFp8Config(qc: JsonObject): QuantConfig {
  const method = optString(qc, 'quant_method');
  if (method === 'fbgemm_fp8') {
    return { method: 'fbgemm_fp8', kind: 'fp8', groupSize: null, symmetric: true, activation: 'dynamic', ignore: optStringList(qc, 'modules_to_not_convert'), zeroOffset: 0 };
  }
  if (qc['weight_block_size'] !== undefined && qc['weight_block_size'] !== null) {
    throw unsupportedQuant(`FP8 with block-wise weight scales (weight_block_size ${JSON.stringify(qc['weight_block_size'])}) is not supported`, {
      weight_block_size: qc['weight_block_size'],
    });
  }
  const fmt = optString(qc, 'fmt') ?? 'e4m3';
  if (fmt !== 'e4m3') throw unsupportedQuant(`FP8 format "${fmt}" is not supported (only e4m3)`, { fmt });
  const scheme = optString(qc, 'activation_scheme') ?? 'dynamic';
  if (scheme !== 'static' && scheme !== 'dynamic') throw unsupportedQuant(`FP8 activation_scheme "${scheme}" is not supported`, { activation_scheme: scheme });
  return {
    method: 'fp8',
    kind: 'fp8',
    groupSize: null,
    symmetric: true,
    activation: scheme,
    ignore: [...optStringList(qc, 'ignored_layers'), ...optStringList(qc, 'modules_to_not_convert')],
    zeroOffset: 0,
  };
}

export const fp8Format: QuantFormat = {
  methods: ['fp8', 'fbgemm_fp8'],
  parseConfig: parseFp8Config,
  hasModule: isFp8Module,
  readModule: (ckpt, module) => readFp8Module(ckpt, module),
};
