// config.json -> ModelSpec for the model-zoo families, on configs shaped like the Hub's
// (legacy key spellings included), and the settings they refuse with a typed error.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseModelConfig, type HfConfig } from '../src/models/config.js';
import { getFamily, supportedArchitectures } from '../src/models/registry.js';
import { alibiSlopes } from '../src/models/rope.js';
import { isPeregrineError, type ErrorCode } from '../src/errors.js';

function throwsCode(fn: () => unknown, code: ErrorCode, field?: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isPeregrineError(e, code), `expected ${code}, got ${String(e)}`);
    if (field !== undefined) assert.equal(e.details.field, field);
    return true;
  });
}

const ZOO = [
  'GPT2LMHeadModel', 'GPTJForCausalLM', 'GPTNeoXForCausalLM', 'FalconForCausalLM', 'MptForCausalLM', 'BloomForCausalLM',
  'OPTForCausalLM', 'Phi3ForCausalLM', 'GemmaForCausalLM', 'Gemma2ForCausalLM', 'Qwen3ForCausalLM', 'MixtralForCausalLM',
  'Starcoder2ForCausalLM',
];

test('every zoo architecture is registered, once, next to Llama / Mistral / Qwen2', () => {
  const all = supportedArchitectures();
  for (const a of [...ZOO, 'LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM']) assert.ok(all.includes(a), a);
  assert.equal(new Set(all.map((a) => getFamily(a).name)).size, all.length, 'one family per architecture');
});

/** openai-community/gpt2 */
const GPT2: HfConfig = {
  activation_function: 'gelu_new', architectures: ['GPT2LMHeadModel'], bos_token_id: 50256, eos_token_id: 50256,
  layer_norm_epsilon: 1e-5, model_type: 'gpt2', n_ctx: 1024, n_embd: 768, n_head: 12, n_inner: null, n_layer: 12,
  n_positions: 1024, scale_attn_weights: true, vocab_size: 50257,
};

test('GPT-2: n_* keys, 4 x hidden MLP, learned positions, LayerNorm, tied; per-layer scaling refused', () => {
  const s = parseModelConfig(GPT2);
  assert.equal(s.hiddenSize, 768);
  assert.equal(s.numLayers, 12);
  assert.equal(s.headDim, 64);
  assert.equal(s.intermediateSize, 3072);
  assert.equal(s.maxPositionEmbeddings, 1024);
  assert.equal(s.positional, 'learned');
  assert.equal(s.rope, null);
  assert.deepEqual(s.norm, { type: 'layer', eps: 1e-5, weightOffset: 0 });
  assert.equal(s.activation, 'gelu_tanh');
  assert.equal(s.gatedMlp, false);
  assert.deepEqual(s.bias, { qkv: true, o: true, mlp: true, lmHead: false });
  assert.equal(s.tieWordEmbeddings, true);
  assert.deepEqual(s.eosTokenIds, [50256]);
  throwsCode(() => parseModelConfig({ ...GPT2, scale_attn_by_inverse_layer_idx: true }), 'PGN_ERR_UNSUPPORTED_FEATURE', 'scale_attn_by_inverse_layer_idx');
  assert.equal(parseModelConfig({ ...GPT2, scale_attn_weights: false }).attentionScale, 1);
});

test('GPT-J 6B: partial rotary with interleaved pairs, parallel residual, LM head bias', () => {
  const s = parseModelConfig({
    activation_function: 'gelu_new', architectures: ['GPTJForCausalLM'], model_type: 'gptj', n_embd: 4096, n_head: 16,
    n_layer: 28, n_positions: 2048, rotary_dim: 64, vocab_size: 50400, tie_word_embeddings: false,
  });
  assert.equal(s.headDim, 256);
  assert.deepEqual(s.rope && { dim: s.rope.rotaryDim, style: s.rope.style, theta: s.rope.theta }, { dim: 64, style: 'gptj', theta: 10000 });
  assert.equal(s.parallelResidual, true);
  assert.equal(s.intermediateSize, 4 * 4096);
  assert.deepEqual(s.bias, { qkv: false, o: false, mlp: true, lmHead: true });
  throwsCode(() => parseModelConfig({ architectures: ['GPTJForCausalLM'], n_embd: 64, n_head: 4, n_layer: 1, vocab_size: 8, rotary_dim: 7 }), 'PGN_ERR_CONFIG_INVALID', 'rotary_dim');
});

/** EleutherAI/pythia-160m (transformers 4.x keys) */
const PYTHIA: HfConfig = {
  architectures: ['GPTNeoXForCausalLM'], bos_token_id: 0, eos_token_id: 0, hidden_act: 'gelu', hidden_size: 768,
  intermediate_size: 3072, layer_norm_eps: 1e-5, max_position_embeddings: 2048, model_type: 'gpt_neox',
  num_attention_heads: 12, num_hidden_layers: 12, rotary_emb_base: 10000, rotary_pct: 0.25, tie_word_embeddings: false,
  use_parallel_residual: true, vocab_size: 50304,
};

test('GPT-NeoX: rotary_pct / rotary_emb_base (4.x) or rope_parameters (5.x), 0.25 by default', () => {
  const s = parseModelConfig(PYTHIA);
  assert.deepEqual(s.rope && { dim: s.rope.rotaryDim, style: s.rope.style, theta: s.rope.theta }, { dim: 16, style: 'neox', theta: 10000 });
  assert.equal(s.parallelResidual, true);
  assert.deepEqual(s.bias, { qkv: true, o: true, mlp: true, lmHead: false });
  assert.equal(parseModelConfig({ ...PYTHIA, rotary_emb_base: 5000 }).rope?.theta, 5000);
  const { rotary_pct: _pct, rotary_emb_base: _base, ...bare } = PYTHIA;
  assert.equal(parseModelConfig(bare).rope?.rotaryDim, 16, 'GPTNeoXConfig default 0.25');
  const v5 = parseModelConfig({ ...bare, rope_parameters: { rope_type: 'default', rope_theta: 10000, partial_rotary_factor: 0.5 }, use_parallel_residual: false, attention_bias: false });
  assert.equal(v5.rope?.rotaryDim, 32);
  assert.equal(v5.parallelResidual, false);
  assert.deepEqual(v5.bias, { qkv: false, o: false, mlp: true, lmHead: false });
});

test('Falcon: 7B multi-query parallel, 40B grouped (legacy n_head_kv), RW with ALiBi scaled by 1/sqrt(headDim)', () => {
  const f7 = parseModelConfig({
    architectures: ['FalconForCausalLM'], model_type: 'falcon', hidden_size: 4544, num_attention_heads: 71, num_hidden_layers: 32,
    multi_query: true, parallel_attn: true, bias: false, alibi: false, new_decoder_architecture: false, vocab_size: 65024,
  });
  assert.equal(f7.numKvHeads, 1);
  assert.equal(f7.parallelResidual, true);
  assert.equal(f7.intermediateSize, 4 * 4544);
  assert.equal(f7.positional, 'rope');
  assert.equal(f7.tieWordEmbeddings, true);
  const f40 = parseModelConfig({
    architectures: ['FalconForCausalLM'], model_type: 'falcon', n_embed: 8192, n_head: 128, n_head_kv: 8, n_layer: 60,
    new_decoder_architecture: true, parallel_attn: true, bias: false, alibi: false, vocab_size: 65024,
  });
  assert.deepEqual([f40.hiddenSize, f40.numHeads, f40.numKvHeads, f40.numLayers], [8192, 128, 8, 60]);
  assert.equal(f40.parallelResidual, true);
  const rw = parseModelConfig({
    architectures: ['FalconForCausalLM'], model_type: 'falcon', hidden_size: 2048, num_attention_heads: 32, num_hidden_layers: 24,
    multi_query: false, parallel_attn: false, bias: true, alibi: true, vocab_size: 50304,
  });
  assert.equal(rw.positional, 'alibi');
  assert.equal(rw.rope, null);
  assert.equal(rw.numKvHeads, 32);
  assert.equal(rw.parallelResidual, false);
  assert.deepEqual(rw.bias, { qkv: true, o: true, mlp: true, lmHead: false });
  assert.deepEqual(rw.alibiSlopes, [...alibiSlopes(32)].map((s) => s / 8));
  throwsCode(() => parseModelConfig({
    architectures: ['FalconForCausalLM'], hidden_size: 64, num_attention_heads: 4, num_kv_heads: 2, num_hidden_layers: 1,
    multi_query: false, vocab_size: 8,
  }), 'PGN_ERR_UNSUPPORTED_FEATURE', 'num_kv_heads');
});

/** mosaicml/mpt-7b */
const MPT7B: HfConfig = {
  architectures: ['MptForCausalLM'], model_type: 'mpt', d_model: 4096, n_heads: 32, n_layers: 32, expansion_ratio: 4,
  max_seq_len: 2048, vocab_size: 50432, no_bias: true, learned_pos_emb: true,
  attn_config: { alibi: true, alibi_bias_max: 8, attn_type: 'multihead_attention', clip_qkv: null, qk_ln: false, softmax_scale: null },
};

test('MPT: d_model / n_heads keys, MPT ALiBi slopes, clip_qkv, softmax_scale; no-ALiBi and qk_ln refused', () => {
  const s = parseModelConfig(MPT7B);
  assert.deepEqual([s.hiddenSize, s.numHeads, s.numLayers, s.maxPositionEmbeddings, s.intermediateSize], [4096, 32, 32, 2048, 16384]);
  assert.equal(s.positional, 'alibi');
  assert.deepEqual(s.alibiSlopes, [...alibiSlopes(32)]);
  assert.equal(s.clipQkv, null);
  assert.deepEqual(s.bias, { qkv: false, o: false, mlp: false, lmHead: false });
  assert.equal(s.activation, 'gelu');
  const clipped = parseModelConfig({ ...MPT7B, attn_config: { ...(MPT7B.attn_config as HfConfig), clip_qkv: 6, softmax_scale: 0.1 } });
  assert.equal(clipped.clipQkv, 6);
  assert.equal(clipped.attentionScale, 0.1);
  throwsCode(() => parseModelConfig({ ...MPT7B, attn_config: { alibi: false } }), 'PGN_ERR_UNSUPPORTED_FEATURE', 'attn_config.alibi');
  throwsCode(() => parseModelConfig({ ...MPT7B, attn_config: { alibi: true, qk_ln: true } }), 'PGN_ERR_UNSUPPORTED_FEATURE', 'attn_config.qk_ln');
});

test('ALiBi slopes for a non-power-of-2 head count: the power-of-2 series, then every other slope of the next', () => {
  // BLOOM's build_alibi_tensor; MPT's build_mpt_alibi_tensor (odd-indexed then even-indexed slopes of 8 heads) agrees
  assert.deepEqual([...alibiSlopes(6)], [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]);
  const mpt8 = Array.from({ length: 8 }, (_, i) => 2 ** -(i + 1));
  assert.deepEqual([...alibiSlopes(6)], [...mpt8.filter((_, i) => i % 2 === 1), ...mpt8.filter((_, i) => i % 2 === 0)].slice(0, 6));
  assert.deepEqual([...alibiSlopes(4, 16)], [2 ** -4, 2 ** -8, 2 ** -12, 2 ** -16], 'alibi_bias_max');
});

test('BLOOM: legacy n_embed, embedding LayerNorm, BLOOM slopes; post-LayerNorm residual refused', () => {
  const raw: HfConfig = {
    architectures: ['BloomForCausalLM'], model_type: 'bloom', n_embed: 1024, n_head: 16, n_layer: 24, vocab_size: 250880,
    layer_norm_epsilon: 1e-5, apply_residual_connection_post_layernorm: false, bos_token_id: 1, eos_token_id: 2,
  };
  const s = parseModelConfig(raw);
  assert.deepEqual([s.hiddenSize, s.numHeads, s.numLayers, s.intermediateSize], [1024, 16, 24, 4096]);
  assert.equal(s.embeddingNorm, true);
  assert.equal(s.activation, 'gelu_tanh');
  assert.deepEqual(s.alibiSlopes, [...alibiSlopes(16)]);
  assert.equal(s.maxPositionEmbeddings, 2048);
  throwsCode(() => parseModelConfig({ ...raw, apply_residual_connection_post_layernorm: true }), 'PGN_ERR_UNSUPPORTED_FEATURE', 'apply_residual_connection_post_layernorm');
});

test('OPT: 350m is post-norm with project_in/out; 125m pre-norm; _remove_final_layer_norm refused', () => {
  const opt350: HfConfig = {
    architectures: ['OPTForCausalLM'], model_type: 'opt', hidden_size: 1024, ffn_dim: 4096, num_attention_heads: 16,
    num_hidden_layers: 24, max_position_embeddings: 2048, do_layer_norm_before: false, word_embed_proj_dim: 512,
    activation_function: 'relu', vocab_size: 50272, bos_token_id: 2, eos_token_id: 2, pad_token_id: 1,
  };
  const s = parseModelConfig(opt350);
  assert.equal(s.normPlacement, 'post');
  assert.equal(s.wordEmbedDim, 512);
  assert.equal(s.intermediateSize, 4096);
  assert.equal(s.activation, 'relu');
  assert.equal(s.positional, 'learned');
  const pre = parseModelConfig({ ...opt350, hidden_size: 768, ffn_dim: 3072, num_attention_heads: 12, do_layer_norm_before: true, word_embed_proj_dim: 768 });
  assert.equal(pre.normPlacement, 'pre');
  assert.equal(pre.wordEmbedDim, pre.hiddenSize);
  throwsCode(() => parseModelConfig({ ...opt350, do_layer_norm_before: true, _remove_final_layer_norm: true }), 'PGN_ERR_UNSUPPORTED_FEATURE', '_remove_final_layer_norm');
});

test('Phi-3: packed projections, sliding window on every layer; LongRoPE refused', () => {
  const raw: HfConfig = {
    architectures: ['Phi3ForCausalLM'], model_type: 'phi3', hidden_size: 3072, intermediate_size: 8192, num_attention_heads: 32,
    num_hidden_layers: 32, num_key_value_heads: 32, max_position_embeddings: 4096, rms_norm_eps: 1e-5, sliding_window: 2047,
    vocab_size: 32064, rope_theta: 10000, rope_scaling: null,
  };
  const s = parseModelConfig(raw);
  assert.equal(s.slidingWindow, 2047);
  assert.equal(s.slidingLayers, null);
  assert.equal(s.gatedMlp, true);
  throwsCode(() => parseModelConfig({ ...raw, rope_scaling: { type: 'longrope', short_factor: [1], long_factor: [1] } }), 'PGN_ERR_UNSUPPORTED_FEATURE');
});

test('Gemma: (1 + w) norms, sqrt(hidden) embedding scale, GELU-tanh from hidden_activation over hidden_act', () => {
  const raw: HfConfig = {
    architectures: ['GemmaForCausalLM'], model_type: 'gemma', hidden_size: 3072, intermediate_size: 24576, num_attention_heads: 16,
    num_key_value_heads: 16, head_dim: 256, num_hidden_layers: 28, hidden_act: 'gelu', hidden_activation: 'gelu_pytorch_tanh',
    rms_norm_eps: 1e-6, vocab_size: 256000, max_position_embeddings: 8192,
  };
  const s = parseModelConfig(raw);
  assert.equal(s.norm.weightOffset, 1);
  assert.equal(s.embeddingScale, Math.sqrt(3072));
  assert.equal(s.activation, 'gelu_tanh');
  assert.equal(s.headDim * s.numHeads, 4096, 'q size differs from hidden');
  assert.equal(s.tieWordEmbeddings, true);
  const { hidden_activation: _a, ...only } = raw;
  assert.equal(parseModelConfig(only).activation, 'gelu', 'transformers 5 reads hidden_act when hidden_activation is absent');
});

test('Gemma 2: soft-caps, query_pre_attn_scalar, sandwich norms, sliding window on alternate layers', () => {
  const raw: HfConfig = {
    architectures: ['Gemma2ForCausalLM'], model_type: 'gemma2', hidden_size: 3584, intermediate_size: 14336, num_attention_heads: 16,
    num_key_value_heads: 8, head_dim: 256, num_hidden_layers: 4, vocab_size: 256000, max_position_embeddings: 8192,
    query_pre_attn_scalar: 256, hidden_activation: 'gelu_pytorch_tanh',
  };
  const s = parseModelConfig(raw);
  assert.equal(s.attnLogitSoftcap, 50);
  assert.equal(s.finalLogitSoftcap, 30);
  assert.equal(s.attentionScale, 1 / 16);
  assert.equal(s.slidingWindow, 4096);
  assert.deepEqual(s.slidingLayers, [true, false, true, false]);
  assert.equal(s.sandwichNorms, true);
  const explicit = parseModelConfig({ ...raw, final_logit_softcapping: null, sliding_window: 8, layer_types: ['full_attention', 'sliding_attention', 'full_attention', 'full_attention'] });
  assert.equal(explicit.finalLogitSoftcap, null);
  assert.deepEqual(explicit.slidingLayers, [false, true, false, false]);
  throwsCode(() => parseModelConfig({ ...raw, layer_types: ['sliding_attention'] }), 'PGN_ERR_CONFIG_INVALID', 'layer_types');
});

test('Qwen3: per-head q/k RMSNorm; Mixtral: top-2 of 8 renormalised; StarCoder2: LayerNorm, biases, GELU MLP', () => {
  const qwen3 = parseModelConfig({
    architectures: ['Qwen3ForCausalLM'], model_type: 'qwen3', hidden_size: 1024, intermediate_size: 3072, num_attention_heads: 16,
    num_key_value_heads: 8, head_dim: 128, num_hidden_layers: 28, vocab_size: 151936, max_position_embeddings: 40960,
    rms_norm_eps: 1e-6, rope_theta: 1000000, tie_word_embeddings: true, use_sliding_window: false,
  });
  assert.equal(qwen3.qkNorm, true);
  assert.deepEqual(qwen3.bias, { qkv: false, o: false, mlp: false, lmHead: false });
  const mixtral = parseModelConfig({
    architectures: ['MixtralForCausalLM'], model_type: 'mixtral', hidden_size: 4096, intermediate_size: 14336, num_attention_heads: 32,
    num_key_value_heads: 8, num_hidden_layers: 32, num_local_experts: 8, num_experts_per_tok: 2, vocab_size: 32000,
    max_position_embeddings: 32768, rope_theta: 1e6, sliding_window: null,
  });
  assert.deepEqual(mixtral.moe, { numExperts: 8, topK: 2, renormalize: true });
  assert.equal(mixtral.slidingWindow, null);
  throwsCode(() => parseModelConfig({ architectures: ['MixtralForCausalLM'], hidden_size: 64, intermediate_size: 64, num_attention_heads: 4, num_hidden_layers: 1, vocab_size: 8, num_local_experts: 2, num_experts_per_tok: 3 }), 'PGN_ERR_UNSUPPORTED_FEATURE', 'num_experts_per_tok');
  const sc2 = parseModelConfig({
    architectures: ['Starcoder2ForCausalLM'], model_type: 'starcoder2', hidden_size: 3072, intermediate_size: 12288, num_attention_heads: 24,
    num_key_value_heads: 2, num_hidden_layers: 30, vocab_size: 49152, max_position_embeddings: 16384, norm_epsilon: 1e-5,
    use_bias: true, hidden_act: 'gelu_pytorch_tanh', sliding_window: 4096, rope_theta: 999999.4420358813,
  });
  assert.deepEqual(sc2.norm, { type: 'layer', eps: 1e-5, weightOffset: 0 });
  assert.equal(sc2.gatedMlp, false);
  assert.deepEqual(sc2.bias, { qkv: true, o: true, mlp: true, lmHead: false });
  assert.equal(sc2.slidingWindow, 4096);
});
