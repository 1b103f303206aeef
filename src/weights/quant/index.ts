/**
 * Quantized checkpoints: which format a checkpoint uses (from config.json's quantization_config,
 * or ModelOpt's hf_quant_config.json), and the formats' readers. Each format file holds its own
 * rename table (module suffixes) and converts to the canonical layouts of types.ts.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PeregrineError } from '../../errors.js';
import { isObject, optString, type JsonObject } from './config-fields.js';
import type { QuantConfig, QuantFormat, QuantMethod } from './types.js';
import { unsupportedQuant } from './types.js';
import { awqFormat } from './awq.js';
import { compressedTensorsFormat } from './compressed-tensors.js';
import { fp8Format } from './fp8-checkpoint.js';
import { gptqFormat } from './gptq.js';
import { HF_QUANT_CONFIG_FILE, isModelOptQuantFile, modelOptFormat } from './modelopt.js';

export const QUANT_FORMATS: readonly QuantFormat[] = [compressedTensorsFormat, modelOptFormat, fp8Format, gptqFormat, awqFormat];

const BY_METHOD = new Map<string, QuantFormat>(QUANT_FORMATS.flatMap((f) => f.methods.map((m) => [m, f] as const)));

export function quantFormatOf(cfg: Pick<QuantConfig, 'method'>): QuantFormat {
  return BY_METHOD.get(cfg.method)!;
}

/**
 * The quantization a parsed config.json declares, or null for an unquantized model.
 * @throws PeregrineError PGN_ERR_UNSUPPORTED_FEATURE for a method or variant Peregrine cannot load
 *   (bitsandbytes, act-order GPTQ, block-wise FP8, ...), PGN_ERR_CONFIG_INVALID for a malformed one.
 * @example detectQuantization(JSON.parse(fs.readFileSync('config.json', 'utf8')))?.kind // 'fp8'
 */
export function detectQuantization(rawConfig: Record<string, unknown>): QuantConfig | null {
  const qc = rawConfig['quantization_config'] ?? rawConfig['compression_config'];
  if (qc === undefined || qc === null) return null;
  if (!isObject(qc)) throw new PeregrineError('PGN_ERR_CONFIG_INVALID', 'config.json: "quantization_config" must be an object');
  return parseQuantConfig(qc);
}

/** detectQuantization on `dir`/config.json, falling back to a ModelOpt hf_quant_config.json beside it. */
export function detectQuantizationInDir(dir: string, rawConfig: Record<string, unknown>): QuantConfig | null {
  const fromConfig = detectQuantization(rawConfig);
  if (fromConfig) return fromConfig;
  const file = join(dir, HF_QUANT_CONFIG_FILE);
  if (!existsSync(file)) return null;
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new PeregrineError('PGN_ERR_CONFIG_INVALID', `${file} is not valid JSON: ${(e as Error).message}`, { path: file }, { cause: e });
  }
  return isModelOptQuantFile(json) ? modelOptFormat.parseConfig(json) : null;
}

function parseQuantConfig(qc: JsonObject): QuantConfig {
  const given = (optString(qc, 'quant_method') ?? '').toLowerCase();
  const method = given.startsWith('modelopt') ? 'modelopt' : given; // vLLM accepts modelopt_* spellings too
  const format = BY_METHOD.get(method);
  if (!format) {
    const known = [...BY_METHOD.keys()].join(', ');
    throw unsupportedQuant(`quantization method "${method || 'unspecified'}" is not supported; Peregrine loads ${known}`, { quant_method: method });
  }
  return format.parseConfig({ ...qc, quant_method: method as QuantMethod });
}

export type { HostQuantWeight, QuantConfig, QuantFormat, QuantKind, QuantMethod } from './types.js';
