/**
 * Registry of supported architectures. A family is one small file under `families/`
 * (a `ModelFamily` value) plus one line in `families/index.ts`.
 */
import { PeregrineError } from '../errors.js';
import type { ModelSpec, WeightMap } from './spec.js';
import type { CommonFields } from './config.js';
import type { HfConfig } from './families/fields.js';
import { FAMILIES } from './families/index.js';

/** Defaults of the family's HF config class for keys a config.json may omit. */
export interface FamilyDefaults {
  /** HF `PretrainedConfig` defaults to true; Llama-style classes pass false */
  readonly tieWordEmbeddings?: boolean;
  /** used when neither `rope_theta` nor `rope_parameters.rope_theta` is given (else 10000) */
  readonly ropeTheta?: number;
  /** when absent here and in config.json, `max_position_embeddings` is required */
  readonly maxPositionEmbeddings?: number;
  readonly bosTokenId?: number;
  readonly eosTokenIds?: readonly number[];
}

export interface ModelFamily {
  /** registry key, the HF `model_type` (e.g. 'llama'); also used when config.json has no `architectures` */
  readonly name: string;
  /** HF `architectures` values this family loads, e.g. ['LlamaForCausalLM'] */
  readonly architectures: readonly string[];
  /** HF `attribute_map`: canonical key -> the key this family's config.json uses (GPT-2: hidden_size -> n_embd) */
  readonly attributeMap?: Readonly<Record<string, string>>;
  /**
   * Keys older config.json files use instead (canonical key -> legacy spellings), read when the
   * canonical key is absent: BLOOM's `n_embed` for `hidden_size`, NeoX's `rotary_pct` for
   * `partial_rotary_factor`.
   */
  readonly legacyKeys?: Readonly<Record<string, readonly string[]>>;
  readonly defaults?: FamilyDefaults;
  /** family-specific switches on top of the common fields parsed by config.ts */
  spec(raw: HfConfig, common: CommonFields): ModelSpec;
  /** where each canonical weight lives in the HF checkpoint (see WeightMap in spec.ts) */
  weightMap(spec: ModelSpec): WeightMap;
}

const byArchitecture = new Map<string, ModelFamily>();
for (const family of FAMILIES) {
  for (const arch of family.architectures) {
    if (byArchitecture.has(arch)) throw new Error(`architecture ${arch} registered twice`);
    byArchitecture.set(arch, family);
  }
}

export function supportedArchitectures(): string[] {
  return [...byArchitecture.keys()].sort();
}

export function isSupportedArchitecture(architecture: string): boolean {
  return byArchitecture.has(architecture);
}

/** @throws PeregrineError PGN_ERR_UNKNOWN_ARCHITECTURE, listing the supported architectures */
export function getFamily(architecture: string): ModelFamily {
  const family = byArchitecture.get(architecture);
  if (family === undefined) {
    const supported = supportedArchitectures();
    throw new PeregrineError(
      'PGN_ERR_UNKNOWN_ARCHITECTURE',
      `unknown architecture "${architecture}"; supported architectures: ${supported.join(', ')}`,
      { architecture, supported },
    );
  }
  return family;
}

/** The family whose `name` is this HF `model_type`, for configs without `architectures`. */
export function findFamilyByModelType(modelType: string): ModelFamily | undefined {
  return FAMILIES.find((f) => f.name === modelType);
}
