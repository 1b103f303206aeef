/**
 * HF config.json -> ModelSpec. This file reads the fields every decoder config shares
 * (sizes, heads, RoPE, token ids, dtype); the family file in `families/` adds its switches.
 * Accepts both transformers 4.x (`rope_theta` + `rope_scaling`, `torch_dtype`) and
 * 5.x (`rope_parameters`, `dtype`) spellings.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PeregrineError, isPeregrineError } from '../errors.js';
import type { ModelSpec, RopeSpec, RopeType } from './spec.js';
import { findFamilyByModelType, getFamily, isSupportedArchitecture, type ModelFamily } from './registry.js';
import {
  configInvalid, get, isObject, optionalBool, optionalNumber, optionalPositiveInt, optionalTokenId,
  optionalTokenIds, requireNumber, requirePositiveInt, type HfConfig,
} from './families/fields.js';

export type { HfConfig } from './families/fields.js';

/**
 * What config.ts parses for every family before `ModelFamily.spec` adds the switches: the
 * ModelSpec fields every family shares (headDim: `head_dim` when given, else hidden / heads;
 * numKvHeads: `num_key_value_heads`, default `num_attention_heads`), with
 * `intermediate_size` null when absent (families without one derive it) and the RoPE always
 * parsed (NeoX style; families without RoPE set `spec.rope` to null).
 */
export type CommonFields = Pick<ModelSpec,
  | 'architecture' | 'family' | 'vocabSize' | 'hiddenSize' | 'numLayers' | 'numHeads' | 'numKvHeads' | 'headDim'
  | 'maxPositionEmbeddings' | 'tieWordEmbeddings' | 'bosTokenId' | 'eosTokenIds' | 'padTokenId' | 'torchDtype'> & {
  readonly intermediateSize: number | null;
  readonly rope: RopeSpec;
};

const DEFAULT_ROPE_THETA = 10000;
const SUPPORTED_ROPE_TYPES: readonly RopeType[] = ['default', 'linear', 'dynamic', 'llama3', 'yarn'];
const TORCH_DTYPES: Readonly<Record<string, ModelSpec['torchDtype']>> = {
  float32: 'float32', float: 'float32', fp32: 'float32',
  float16: 'float16', half: 'float16', fp16: 'float16',
  bfloat16: 'bfloat16', bf16: 'bfloat16',
};

/**
 * Normalise a parsed config.json into a ModelSpec.
 * @throws PeregrineError PGN_ERR_CONFIG_INVALID (names the field), PGN_ERR_UNKNOWN_ARCHITECTURE,
 *   PGN_ERR_UNSUPPORTED_FEATURE (e.g. an unknown RoPE type)
 */
export function parseModelConfig(raw: HfConfig): ModelSpec {
  const { architecture, family } = resolveFamily(raw);
  const cfg = withLegacyKeys(raw, family);
  return family.spec(cfg, parseCommonFields(cfg, family, architecture));
}

/** `raw` with each absent canonical key filled from the first legacy spelling present. */
function withLegacyKeys(raw: HfConfig, family: ModelFamily): HfConfig {
  const out: HfConfig = { ...raw };
  for (const [key, legacy] of Object.entries(family.legacyKeys ?? {})) {
    if (get(out, key) !== undefined) continue;
    const found = legacy.find((k) => get(raw, k) !== undefined);
    if (found !== undefined) out[key] = raw[found];
  }
  return out;
}

/**
 * Read and parse `<dir>/config.json`.
 * @throws PeregrineError PGN_ERR_CONFIG_NOT_FOUND (names the path), PGN_ERR_CONFIG_INVALID, and
 *   the errors of `parseModelConfig`, each with the path in its message and `details.path`
 */
export function loadModelConfig(dir: string): { spec: ModelSpec; raw: HfConfig } {
  const path = join(dir, 'config.json');
  const raw = readJsonObject(path, 'PGN_ERR_CONFIG_NOT_FOUND');
  try {
    return { spec: parseModelConfig(raw), raw };
  } catch (e) {
    if (!isPeregrineError(e)) throw e;
    throw new PeregrineError(e.code, `${path}: ${e.message.replace(/^config\.json: /, '')}`, { ...e.details, path }, { cause: e });
  }
}

/** Read a JSON object from `path`; a missing file throws `notFound`, anything else PGN_ERR_CONFIG_INVALID. */
export function readJsonObject(path: string, notFound: 'PGN_ERR_CONFIG_NOT_FOUND'): HfConfig;
export function readJsonObject(path: string, notFound: null): HfConfig | null;
export function readJsonObject(path: string, notFound: 'PGN_ERR_CONFIG_NOT_FOUND' | null): HfConfig | null {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      if (notFound === null) return null;
      throw new PeregrineError(notFound, `${path} not found`, { path }, { cause: e });
    }
    throw new PeregrineError('PGN_ERR_CONFIG_INVALID', `${path} cannot be read: ${(e as Error).message}`, { path }, { cause: e });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new PeregrineError('PGN_ERR_CONFIG_INVALID', `${path} is not valid JSON: ${(e as Error).message}`, { path }, { cause: e });
  }
  if (!isObject(parsed)) {
    throw new PeregrineError('PGN_ERR_CONFIG_INVALID', `${path} must hold a JSON object`, { path });
  }
  return parsed;
}

/** First supported entry of `architectures`; without that key, the family named by `model_type`. */
function resolveFamily(raw: HfConfig): { architecture: string; family: ModelFamily } {
  const archs = get(raw, 'architectures');
  if (archs !== undefined) {
    if (!Array.isArray(archs) || archs.length === 0 || !archs.every((a) => typeof a === 'string')) {
      throw configInvalid('architectures', `"architectures" must be a non-empty list of strings (got ${JSON.stringify(archs)})`);
    }
    const architecture = (archs as string[]).find(isSupportedArchitecture) ?? (archs[0] as string);
    return { architecture, family: getFamily(architecture) };
  }
  const modelType = get(raw, 'model_type');
  if (typeof modelType !== 'string') throw configInvalid('architectures', '"architectures" is missing (and so is "model_type")');
  const family = findFamilyByModelType(modelType);
  if (family === undefined) return { architecture: modelType, family: getFamily(modelType) };
  return { architecture: family.architectures[0]!, family };
}

function parseCommonFields(raw: HfConfig, family: ModelFamily, architecture: string): CommonFields {
  const key = (k: string): string => family.attributeMap?.[k] ?? k;
  const defaults = family.defaults ?? {};

  const hiddenSize = requirePositiveInt(raw, key('hidden_size'));
  const numHeads = requirePositiveInt(raw, key('num_attention_heads'));
  const numKvHeads = optionalPositiveInt(raw, key('num_key_value_heads')) ?? numHeads;
  if (numHeads % numKvHeads !== 0) {
    throw configInvalid(key('num_key_value_heads'), `"${key('num_attention_heads')}" (${numHeads}) must be a multiple of "${key('num_key_value_heads')}" (${numKvHeads})`);
  }
  let headDim = optionalPositiveInt(raw, key('head_dim'));
  if (headDim === undefined) {
    if (hiddenSize % numHeads !== 0) {
      throw configInvalid(key('hidden_size'), `"${key('hidden_size')}" (${hiddenSize}) is not divisible by "${key('num_attention_heads')}" (${numHeads}) and "head_dim" is not given`);
    }
    headDim = hiddenSize / numHeads;
  }
  const maxPositionEmbeddings = optionalPositiveInt(raw, key('max_position_embeddings')) ?? defaults.maxPositionEmbeddings
    ?? requirePositiveInt(raw, key('max_position_embeddings'));

  return {
    architecture,
    family: family.name,
    vocabSize: requirePositiveInt(raw, key('vocab_size')),
    hiddenSize,
    numLayers: requirePositiveInt(raw, key('num_hidden_layers')),
    numHeads,
    numKvHeads,
    headDim,
    intermediateSize: optionalPositiveInt(raw, key('intermediate_size')) ?? null,
    maxPositionEmbeddings,
    rope: parseRope(raw, key, headDim, maxPositionEmbeddings, defaults.ropeTheta ?? DEFAULT_ROPE_THETA),
    tieWordEmbeddings: optionalBool(raw, key('tie_word_embeddings')) ?? defaults.tieWordEmbeddings ?? true,
    bosTokenId: optionalTokenId(raw, key('bos_token_id')) ?? defaults.bosTokenId ?? null,
    eosTokenIds: optionalTokenIds(raw, key('eos_token_id')) ?? defaults.eosTokenIds ?? [],
    padTokenId: optionalTokenId(raw, key('pad_token_id')) ?? null,
    torchDtype: parseTorchDtype(raw),
  };
}

function parseTorchDtype(raw: HfConfig): ModelSpec['torchDtype'] {
  const field = get(raw, 'dtype') !== undefined ? 'dtype' : 'torch_dtype';
  const v = get(raw, field);
  if (v === undefined) return 'float32';
  if (typeof v === 'string' && Object.hasOwn(TORCH_DTYPES, v.replace(/^torch\./, ''))) return TORCH_DTYPES[v.replace(/^torch\./, '')]!;
  throw configInvalid(field, `"${field}" must be one of float32, float16, bfloat16 (got ${JSON.stringify(v)})`);
}

/**
 * RoPE parameters from `rope_parameters` (5.x) or `rope_scaling` (4.x, `type` or `rope_type`),
 * with `rope_theta` / `partial_rotary_factor` inside that dict or at the top level.
 * Defaults follow transformers 5.x `standardize_rope_params`: `original_max_position_embeddings`
 * for llama3/yarn comes from the top level, then the dict, then `max_position_embeddings`.
 */
function parseRope(raw: HfConfig, key: (k: string) => string, headDim: number, maxPositionEmbeddings: number, defaultTheta: number): RopeSpec {
  const where = isObject(raw.rope_parameters) ? 'rope_parameters' : 'rope_scaling';
  const params = raw[where] ?? {};
  if (!isObject(params)) throw configInvalid(where, `"${where}" must be an object or null (got ${JSON.stringify(params)})`);
  const field = (k: string): string => `${where}.${k}`;

  const perLayer = Object.keys(params).filter((k) => isObject(params[k]));
  if (perLayer.length > 0) {
    // 5.x nests one dict per layer type (Gemma: full_attention / sliding_attention)
    throw new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', `config.json: per-layer RoPE parameters in "${where}" (${perLayer.join(', ')}) are not supported by this family`, { field: where });
  }
  const type = get(params, 'rope_type') ?? get(params, 'type') ?? 'default';
  if (typeof type !== 'string' || !(SUPPORTED_ROPE_TYPES as readonly string[]).includes(type)) {
    throw new PeregrineError(
      'PGN_ERR_UNSUPPORTED_FEATURE',
      `config.json: RoPE type ${JSON.stringify(type)} in "${where}" is not supported (supported: ${SUPPORTED_ROPE_TYPES.join(', ')})`,
      { field: field('rope_type'), value: type, supported: SUPPORTED_ROPE_TYPES },
    );
  }
  const theta = optionalNumber(params, 'rope_theta', field('rope_theta')) ?? optionalNumber(raw, key('rope_theta')) ?? defaultTheta;
  const partial = optionalNumber(params, 'partial_rotary_factor', field('partial_rotary_factor'))
    ?? optionalNumber(raw, key('partial_rotary_factor')) ?? 1;
  const rotaryDim = Math.trunc(headDim * partial); // HF: int(head_dim * partial_rotary_factor)
  if (!(theta > 0)) throw configInvalid(field('rope_theta'), `"rope_theta" must be positive (got ${theta})`);
  if (rotaryDim <= 0 || rotaryDim % 2 !== 0 || rotaryDim > headDim) {
    throw configInvalid('partial_rotary_factor', `"partial_rotary_factor" (${partial}) gives rotary dim ${rotaryDim} for head dim ${headDim}; it must be even and in (0, head_dim]`);
  }
  const base: RopeSpec = { type: type as RopeType, theta, rotaryDim, style: 'neox', factor: 1 };
  const factor = (): number => {
    const f = requireNumber(params, 'factor', field('factor'));
    if (!(f > 0)) throw configInvalid(field('factor'), `"${field('factor')}" must be positive (got ${f})`);
    return f;
  };
  const originalMax = (): number => optionalPositiveInt(raw, 'original_max_position_embeddings')
    ?? optionalPositiveInt(params, 'original_max_position_embeddings', field('original_max_position_embeddings'))
    ?? maxPositionEmbeddings;

  switch (base.type) {
    case 'default':
      return base;
    case 'linear':
      return { ...base, factor: factor() };
    case 'dynamic':
      // HF computes dynamic NTK against config.max_position_embeddings (rope dict's value is unused)
      return { ...base, factor: factor(), originalMaxPositionEmbeddings: maxPositionEmbeddings };
    case 'llama3':
      return {
        ...base,
        factor: factor(),
        lowFreqFactor: requireNumber(params, 'low_freq_factor', field('low_freq_factor')),
        highFreqFactor: requireNumber(params, 'high_freq_factor', field('high_freq_factor')),
        originalMaxPositionEmbeddings: originalMax(),
      };
    case 'yarn': {
      const original = originalMax();
      // The explicit factor wins, as in transformers 5.x and vLLM (4.x replaced it with
      // max_position_embeddings / original whenever the dict held the original length);
      // 5.x: an absent factor is implied by the context extension.
      const f = get(params, 'factor') === undefined ? maxPositionEmbeddings / original : factor();
      const spec: { -readonly [K in keyof RopeSpec]: RopeSpec[K] } = {
        ...base,
        factor: f,
        originalMaxPositionEmbeddings: original,
        betaFast: optionalNumber(params, 'beta_fast', field('beta_fast')) || 32, // HF: `or 32`
        betaSlow: optionalNumber(params, 'beta_slow', field('beta_slow')) || 1,
        truncate: optionalBool(params, 'truncate', field('truncate')) ?? true,
      };
      const mscale = optionalNumber(params, 'mscale', field('mscale'));
      const mscaleAllDim = optionalNumber(params, 'mscale_all_dim', field('mscale_all_dim'));
      const attentionFactor = optionalNumber(params, 'attention_factor', field('attention_factor'));
      if (mscale !== undefined) spec.mscale = mscale;
      if (mscaleAllDim !== undefined) spec.mscaleAllDim = mscaleAllDim;
      if (attentionFactor !== undefined) spec.attentionFactor = attentionFactor;
      return spec;
    }
  }
}
