/**
 * What `peregrine build` writes for each kind: standard formats, so the output also loads in
 * vLLM / transformers, and Peregrine's loader reads it back through the same code as any other
 * pre-quantized checkpoint.
 * - fp8:  compressed-tensors float-quantized (E4M3 weights, per-tensor or per-channel f32 scales,
 *         dynamic per-token activations: llm-compressor's FP8_DYNAMIC scheme when per channel);
 * - int8: compressed-tensors pack-quantized 8-bit, symmetric, per channel (W8A16);
 * - int4: GPTQ v1, group 128, desc_act false, symmetric or asymmetric (W4A16).
 */
import type { TensorToWrite } from '../safetensors-writer.js';
import type { JsonObject } from './config-fields.js';
import type { QuantKind } from './types.js';
import { DEFAULT_GROUP_SIZE, unsupportedQuant } from './types.js';
import { compressedTensorsConfig, fp8ToCompressedTensors, int8ToCompressedTensors } from './compressed-tensors.js';
import { gptqConfig, int4ToGptq } from './gptq.js';
import { INT4_PER_WORD } from './int4.js';
import { quantizeWeight } from './quantize.js';

export interface CheckpointQuantOptions {
  readonly kind: QuantKind;
  /** fp8 weight scales (default 'tensor') */
  readonly fp8Scale?: 'tensor' | 'channel';
  /** int4 group size (default 128); int8: per channel unless given */
  readonly groupSize?: number;
  /** int4 (default true) */
  readonly symmetric?: boolean;
}

/** GPTQ v1 stores zero - 1 in a nibble, so asymmetric zero points start at 1 */
const GPTQ_V1_MIN_ZERO = 1;

/** Why a [N, K] weight cannot be stored in `kind`'s format, or null when it can. */
export function unsupportedShapeReason(kind: QuantKind, N: number, K: number): string | null {
  if (kind === 'int4') {
    if (K % INT4_PER_WORD !== 0 || N % INT4_PER_WORD !== 0) return `GPTQ int4 needs both dims divisible by ${INT4_PER_WORD}`;
  } else if (K % 4 !== 0) {
    return `${kind} needs the input size divisible by 4`;
  }
  return null;
}

/** f32 w [N, K] of linear `module` -> the tensors of its quantized form. */
export function quantizeForCheckpoint(w: Float32Array, N: number, K: number, opts: CheckpointQuantOptions, module: string): Record<string, TensorToWrite> {
  const why = unsupportedShapeReason(opts.kind, N, K);
  if (why) throw unsupportedQuant(`'${module}' [${N}, ${K}]: ${why}`, { module, shape: [N, K] });
  switch (opts.kind) {
    case 'fp8':
      return fp8ToCompressedTensors(module, quantizeWeight(w, N, K, { kind: 'fp8', fp8Scale: opts.fp8Scale }, module));
    case 'int8':
      return int8ToCompressedTensors(module, quantizeWeight(w, N, K, { kind: 'int8', groupSize: opts.groupSize }, module));
    case 'int4': {
      const symmetric = opts.symmetric ?? true;
      const h = quantizeWeight(w, N, K, { kind: 'int4', groupSize: opts.groupSize ?? DEFAULT_GROUP_SIZE, symmetric, f16Scales: true, minZero: GPTQ_V1_MIN_ZERO }, module);
      return int4ToGptq(module, h);
    }
  }
}

/** The quantization_config for config.json; `ignore` lists the linear modules left unquantized. */
export function quantizationConfigFor(opts: CheckpointQuantOptions, ignore: readonly string[]): JsonObject {
  switch (opts.kind) {
    case 'fp8':
      return compressedTensorsConfig('fp8', { fp8Scale: opts.fp8Scale ?? 'tensor' }, ignore);
    case 'int8':
      return compressedTensorsConfig('int8', { groupSize: opts.groupSize ?? null }, ignore);
    case 'int4':
      return gptqConfig(opts.groupSize ?? DEFAULT_GROUP_SIZE, opts.symmetric ?? true, ignore);
  }
}
