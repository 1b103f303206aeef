/**
 * ModelSpec: everything the generic decoder needs to know about an architecture,
 * normalised from a Hugging Face config.json by `models/config.ts`.
 */

/** NeoX pairs dim i with i + rotaryDim/2 (HF "rotate_half", Llama); GPT-J pairs 2i with 2i+1. */
export type RopeStyle = 'neox' | 'gptj';

export type RopeType = 'default' | 'linear' | 'dynamic' | 'llama3' | 'yarn';

export interface RopeSpec {
  readonly type: RopeType;
  readonly theta: number;
  /** leading dims of each head that rotate (partial_rotary_factor * headDim) */
  readonly rotaryDim: number;
  readonly style: RopeStyle;
  /** linear / dynamic / llama3 / yarn scaling factor */
  readonly factor: number;
  /** llama3 */
  readonly lowFreqFactor?: number;
  readonly highFreqFactor?: number;
  /** llama3 / yarn / dynamic: the context the model was pre-trained with */
  readonly originalMaxPositionEmbeddings?: number;
  /** yarn */
  readonly betaFast?: number;
  readonly betaSlow?: number;
  readonly mscale?: number;
  readonly mscaleAllDim?: number;
  /** yarn: explicit attention_factor (cos/sin are multiplied by it) */
  readonly attentionFactor?: number;
  readonly truncate?: boolean;
}

export type NormType = 'rms' | 'layer';
export type Activation = 'silu' | 'gelu' | 'gelu_tanh' | 'relu';
export type Positional = 'rope' | 'learned' | 'alibi' | 'none';

export interface ModelSpec {
  /** the HF `architectures[0]`, e.g. "LlamaForCausalLM" */
  readonly architecture: string;
  /** family key in the registry, e.g. "llama" */
  readonly family: string;
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly intermediateSize: number;
  readonly maxPositionEmbeddings: number;

  readonly norm: { readonly type: NormType; readonly eps: number; readonly weightOffset: number };
  readonly activation: Activation;
  /** gate_up (act(gate) * up) rather than one up projection */
  readonly gatedMlp: boolean;
  readonly bias: { readonly qkv: boolean; readonly o: boolean; readonly mlp: boolean; readonly lmHead: boolean };
  readonly positional: Positional;
  readonly rope: RopeSpec | null;
  readonly tieWordEmbeddings: boolean;
  /** attention and MLP both read the same normed input and add into one residual (GPT-J, NeoX, Falcon) */
  readonly parallelResidual: boolean;
  readonly slidingWindow: number | null;
  /** softmax scale; default 1/sqrt(headDim) */
  readonly attentionScale: number;
  /** multiply embeddings by this (Gemma: sqrt(hidden)) */
  readonly embeddingScale: number;
  readonly finalLogitSoftcap: number | null;
  readonly attnLogitSoftcap: number | null;

  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  readonly padTokenId: number | null;
  /** dtype the checkpoint says it was trained/stored in */
  readonly torchDtype: 'float32' | 'float16' | 'bfloat16';
}

/** Canonical per-model weight names the decoder reads (HF submodule names, `model.` prefix dropped). */
export type GlobalWeight = 'embed_tokens.weight' | 'embed_positions.weight' | 'norm.weight' | 'norm.bias' | 'lm_head.weight' | 'lm_head.bias';
export type LayerWeight =
  | 'input_layernorm.weight'
  | 'input_layernorm.bias'
  | 'self_attn.qkv_proj.weight'
  | 'self_attn.qkv_proj.bias'
  | 'self_attn.o_proj.weight'
  | 'self_attn.o_proj.bias'
  | 'post_attention_layernorm.weight'
  | 'post_attention_layernorm.bias'
  | 'mlp.gate_up_proj.weight'
  | 'mlp.gate_up_proj.bias'
  | 'mlp.up_proj.weight'
  | 'mlp.up_proj.bias'
  | 'mlp.down_proj.weight'
  | 'mlp.down_proj.bias';

/**
 * Where each canonical weight lives in the HF checkpoint. A list means "concatenate
 * these tensors along dim 0" (packed q|k|v, gate|up). `{i}` is the layer index.
 * Entries that a spec does not use (biases it lacks) are ignored; an optional
 * entry (`optional`) may be absent from the checkpoint.
 */
export interface WeightMap {
  readonly global: Partial<Record<GlobalWeight, string | readonly string[]>>;
  readonly layer: Partial<Record<LayerWeight, string | readonly string[]>>;
}
