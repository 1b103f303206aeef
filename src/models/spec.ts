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
/**
 * Where a layer's norms sit. 'pre': x += block(norm(x)), and a final norm before the LM head
 * (almost every model). 'post': x = norm(x + block(x)), no final norm (OPT with
 * `do_layer_norm_before: false`, e.g. OPT-350m).
 */
export type NormPlacement = 'pre' | 'post';

/** Mixture of experts in place of the MLP: a router picks `topK` of `numExperts` SiLU-gated experts. */
export interface MoeSpec {
  readonly numExperts: number;
  readonly topK: number;
  /** rescale the chosen experts' softmax weights to sum to 1 (Mixtral) */
  readonly renormalize: boolean;
}

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

  /** see NormPlacement; 'post' implies no final norm */
  readonly normPlacement: NormPlacement;
  /** Gemma 2: the attention and MLP outputs are normed again before their residual add */
  readonly sandwichNorms: boolean;
  /** LayerNorm on the (scaled) embeddings before layer 0 (BLOOM's word_embeddings_layernorm) */
  readonly embeddingNorm: boolean;
  /** width of the token embeddings; != hiddenSize means project_in / project_out around the layers (OPT) */
  readonly wordEmbedDim: number;
  /** ALiBi slope per head, already multiplied into the score scale the model uses (null without ALiBi) */
  readonly alibiSlopes: readonly number[] | null;
  /** clamp q|k|v to [-clipQkv, clipQkv] after the projection (MPT `clip_qkv`) */
  readonly clipQkv: number | null;
  /** RMSNorm over each head of q and k before RoPE (Qwen3 q_norm / k_norm) */
  readonly qkNorm: boolean;
  /** which layers use `slidingWindow` (Gemma 2 alternates); null = every layer */
  readonly slidingLayers: readonly boolean[] | null;
  readonly moe: MoeSpec | null;

  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  readonly padTokenId: number | null;
  /** dtype the checkpoint says it was trained/stored in */
  readonly torchDtype: 'float32' | 'float16' | 'bfloat16';
}

/** Canonical per-model weight names the decoder reads (HF submodule names, `model.` prefix dropped). */
export type GlobalWeight =
  | 'embed_tokens.weight'
  | 'embed_positions.weight'
  /** BLOOM's word_embeddings_layernorm */
  | 'embed_layernorm.weight'
  | 'embed_layernorm.bias'
  /** OPT's project_in [hidden, wordEmbedDim] / project_out [wordEmbedDim, hidden] */
  | 'project_in.weight'
  | 'project_out.weight'
  | 'norm.weight'
  | 'norm.bias'
  | 'lm_head.weight'
  | 'lm_head.bias';
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
  | 'mlp.down_proj.bias'
  /** Qwen3: RMSNorm weights [headDim] applied to every q / k head */
  | 'self_attn.q_norm.weight'
  | 'self_attn.k_norm.weight'
  /** Gemma 2 sandwich norms: HF post_attention_layernorm / post_feedforward_layernorm */
  | 'attn_output_layernorm.weight'
  | 'mlp_output_layernorm.weight'
  /** MoE router [numExperts, hidden]; the experts are mlp.gate_up_proj [E, 2I, H] and mlp.down_proj [E, H, I] */
  | 'mlp.router.weight';

/**
 * A load-time reshaping of a checkpoint tensor, applied to its raw bytes whatever the dtype
 * (so F32/F16/BF16 alike, and before any backend upload).
 */
export type WeightTransform =
  /** [a, b] -> [b, a]: GPT-2's Conv1D stores linear weights [in, out] */
  | { readonly kind: 'transpose' }
  /**
   * dim 0 read as `order.length` blocks of `blockRows` rows; output block k is input block
   * order[k]. Fused QKV stored per head ([numHeads, 3, headDim] rows) becomes q | k | v.
   */
  | { readonly kind: 'permuteBlocks'; readonly blockRows: number; readonly order: readonly number[] }
  /** drop the first `start` rows (OPT's learned positions begin at row 2) */
  | { readonly kind: 'sliceRows'; readonly start: number }
  /** same bytes, another shape (per-expert tensors concatenated into [numExperts, ...]) */
  | { readonly kind: 'reshape'; readonly shape: readonly number[] };

/** A weight read with transforms, or from another layout when the first is absent. */
export interface WeightSource {
  /** one tensor, or several concatenated along dim 0 */
  readonly names: string | readonly string[];
  /** applied in order to the (concatenated) tensor */
  readonly transforms?: readonly WeightTransform[];
  /** where to look when `names` are not in the checkpoint (e.g. transformers 5 fused experts) */
  readonly fallback?: WeightEntry;
}

/** A tensor name, names to concatenate along dim 0 (packed q|k|v, gate|up), or a WeightSource. */
export type WeightEntry = string | readonly string[] | WeightSource;

/**
 * Where each canonical weight lives in the HF checkpoint. `{i}` is the layer index.
 * Entries that a spec does not use (biases it lacks) are ignored; optional weights
 * (LayerNorm biases) may be absent from the checkpoint.
 */
export interface WeightMap {
  readonly global: Partial<Record<GlobalWeight, WeightEntry>>;
  readonly layer: Partial<Record<LayerWeight, WeightEntry>>;
  /**
   * The base model's prefix in the names above (`model`, `transformer`, `gpt_neox`). A name
   * missing from the checkpoint is also looked up without it: checkpoints saved from the base
   * model class (GPT-2, BLOOM, OPT on the Hub) lack it.
   */
  readonly basePrefix?: string;
}
