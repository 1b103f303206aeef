/**
 * NVIDIA TensorRT Model Optimizer (ModelOpt) FP8 exports. The config is either config.json's
 * `quantization_config: {quant_method: "modelopt", quant_algo: "FP8", ignore: [...]}` or
 * hf_quant_config.json's `{producer: {name: "modelopt"}, quantization: {quant_algo: "FP8",
 * kv_cache_quant_algo, exclude_modules: [...]}}` (exclusions are fnmatch wildcards).
 *   quant_algo FP8                        per-tensor weight_scale [], static input_scale []
 *   quant_algo FP8_PER_CHANNEL_PER_TOKEN  per-channel weight_scale [N], dynamic per-token activations
 * Tensors follow the scaled-FP8 layout (fp8-checkpoint.ts). KV-cache scales (k_scale, v_scale)
 * are left for the FP8 KV cache work.
 */
import { isObject, optObject, optString, optStringList, type JsonObject } from './config-fields.js';
import type { QuantConfig, QuantFormat } from './types.js';
import { invalidQuantConfig, unsupportedQuant } from './types.js';
import { isFp8Module, readFp8Module } from './fp8-checkpoint.js';

export const HF_QUANT_CONFIG_FILE = 'hf_quant_config.json';
const SUPPORTED_ALGOS = ['FP8', 'FP8_PER_CHANNEL_PER_TOKEN'];

/** `qc` is config.json's quantization_config or the whole hf_quant_config.json. */
export function parseModelOptConfig(qc: JsonObject): QuantConfig {
  const nested = optObject(qc, 'quantization');
  const src = nested ?? qc;
  const algo = (optString(src, 'quant_algo') ?? '').toUpperCase();
  if (!algo) throw invalidQuantConfig('ModelOpt config has no "quant_algo"');
  if (!SUPPORTED_ALGOS.includes(algo)) {
    throw unsupportedQuant(`ModelOpt quant_algo "${algo}" is not supported (supported: ${SUPPORTED_ALGOS.join(', ')})`, { quant_algo: algo });
  }
  const ignore = nested ? optStringList(src, 'exclude_modules') : [...optStringList(src, 'ignore'), ...optStringList(src, 'exclude_modules')];
  return {
    method: 'modelopt',
    kind: 'fp8',
    groupSize: null,
    symmetric: true,
    activation: algo === 'FP8' ? 'static' : 'dynamic',
    ignore,
    zeroOffset: 0,
  };
}

/** true for an hf_quant_config.json written by ModelOpt */
export function isModelOptQuantFile(json: unknown): json is JsonObject {
  if (!isObject(json)) return false;
  const producer = json['producer'];
  return isObject(producer) && producer['name'] === 'modelopt' && isObject(json['quantization']);
}

export const modelOptFormat: QuantFormat = {
  methods: ['modelopt'],
  parseConfig: parseModelOptConfig,
  hasModule: isFp8Module,
  readModule: (ckpt, module) => readFp8Module(ckpt, module),
};
