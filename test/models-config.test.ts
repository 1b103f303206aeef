import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModelConfig, parseModelConfig, type HfConfig } from '../src/models/config.js';
import { loadGenerationConfig } from '../src/models/generation-config.js';
import { getFamily, supportedArchitectures } from '../src/models/registry.js';
import { isPeregrineError, type ErrorCode } from '../src/errors.js';

/** meta-llama/Llama-3.1-8B-Instruct config.json as transformers 4.x writes it */
const LLAMA31_V4: HfConfig = {
  architectures: ['LlamaForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 128000,
  eos_token_id: [128001, 128008, 128009],
  hidden_act: 'silu',
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 14336,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: 'llama',
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
  rope_theta: 500000.0,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  transformers_version: '4.43.0.dev0',
  use_cache: true,
  vocab_size: 128256,
};

/** the same model as transformers 5.x writes it (rope_parameters, dtype, head_dim) */
const LLAMA31_V5: HfConfig = {
  architectures: ['LlamaForCausalLM'],
  attention_bias: false,
  bos_token_id: 128000,
  dtype: 'bfloat16',
  eos_token_id: [128001, 128008, 128009],
  head_dim: 128,
  hidden_act: 'silu',
  hidden_size: 4096,
  intermediate_size: 14336,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: 'llama',
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  pad_token_id: null,
  rms_norm_eps: 1e-5,
  rope_parameters: {
    factor: 8.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_theta: 500000.0, rope_type: 'llama3',
  },
  tie_word_embeddings: false,
  transformers_version: '5.0.0',
  vocab_size: 128256,
};

/** Qwen/Qwen2.5-7B-Instruct */
const QWEN25_7B: HfConfig = {
  architectures: ['Qwen2ForCausalLM'],
  attention_dropout: 0.0,
  bos_token_id: 151643,
  eos_token_id: 151645,
  hidden_act: 'silu',
  hidden_size: 3584,
  initializer_range: 0.02,
  intermediate_size: 18944,
  max_position_embeddings: 32768,
  max_window_layers: 28,
  model_type: 'qwen2',
  num_attention_heads: 28,
  num_hidden_layers: 28,
  num_key_value_heads: 4,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  sliding_window: 131072,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  use_cache: true,
  use_sliding_window: false,
  vocab_size: 152064,
};

/** mistralai/Mistral-7B-v0.1 */
const MISTRAL_7B: HfConfig = {
  architectures: ['MistralForCausalLM'],
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 14336,
  max_position_embeddings: 32768,
  model_type: 'mistral',
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  sliding_window: 4096,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  vocab_size: 32000,
};

function throwsCode(fn: () => unknown, code: ErrorCode, check?: (e: { message: string; details: Record<string, unknown> }) => void): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isPeregrineError(e, code), `expected ${code}, got ${String(e)}`);
    check?.(e);
    return true;
  });
}

function withDir(files: Record<string, string>, fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'pgn-config-'));
  try {
    for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const without = (raw: HfConfig, key: string): HfConfig => Object.fromEntries(Object.entries(raw).filter(([k]) => k !== key));

test('Llama 3.1 8B: transformers 4.x and 5.x configs give the same spec', () => {
  const v4 = parseModelConfig(LLAMA31_V4);
  assert.deepEqual(parseModelConfig(LLAMA31_V5), v4);
  assert.equal(v4.architecture, 'LlamaForCausalLM');
  assert.equal(v4.family, 'llama');
  assert.equal(v4.headDim, 128);
  assert.equal(v4.numKvHeads, 8);
  assert.equal(v4.intermediateSize, 14336);
  assert.equal(v4.maxPositionEmbeddings, 131072);
  assert.deepEqual(v4.norm, { type: 'rms', eps: 1e-5, weightOffset: 0 });
  assert.equal(v4.activation, 'silu');
  assert.equal(v4.gatedMlp, true);
  assert.deepEqual(v4.bias, { qkv: false, o: false, mlp: false, lmHead: false });
  assert.equal(v4.positional, 'rope');
  assert.deepEqual(v4.rope, {
    type: 'llama3', theta: 500000, rotaryDim: 128, style: 'neox', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192,
  });
  assert.equal(v4.tieWordEmbeddings, false);
  assert.equal(v4.slidingWindow, null);
  assert.equal(v4.attentionScale, 1 / Math.sqrt(128));
  assert.equal(v4.bosTokenId, 128000);
  assert.deepEqual(v4.eosTokenIds, [128001, 128008, 128009]);
  assert.equal(v4.padTokenId, null);
  assert.equal(v4.torchDtype, 'bfloat16');
});

test('Llama: weight map packs q|k|v and gate|up, no biases, separate lm_head', () => {
  const spec = parseModelConfig(LLAMA31_V4);
  const map = getFamily('LlamaForCausalLM').weightMap(spec);
  assert.deepEqual(map.global, {
    'embed_tokens.weight': 'model.embed_tokens.weight',
    'norm.weight': 'model.norm.weight',
    'lm_head.weight': 'lm_head.weight',
  });
  assert.deepEqual(map.layer, {
    'input_layernorm.weight': 'model.layers.{i}.input_layernorm.weight',
    'self_attn.qkv_proj.weight': ['model.layers.{i}.self_attn.q_proj.weight', 'model.layers.{i}.self_attn.k_proj.weight', 'model.layers.{i}.self_attn.v_proj.weight'],
    'self_attn.o_proj.weight': 'model.layers.{i}.self_attn.o_proj.weight',
    'post_attention_layernorm.weight': 'model.layers.{i}.post_attention_layernorm.weight',
    'mlp.gate_up_proj.weight': ['model.layers.{i}.mlp.gate_proj.weight', 'model.layers.{i}.mlp.up_proj.weight'],
    'mlp.down_proj.weight': 'model.layers.{i}.mlp.down_proj.weight',
  });
});

test('Llama: attention_bias / mlp_bias add bias entries', () => {
  const spec = parseModelConfig({ ...LLAMA31_V4, attention_bias: true, mlp_bias: true });
  assert.deepEqual(spec.bias, { qkv: true, o: true, mlp: true, lmHead: false });
  const { layer } = getFamily('LlamaForCausalLM').weightMap(spec);
  assert.deepEqual(layer['self_attn.qkv_proj.bias'], ['q_proj', 'k_proj', 'v_proj'].map((p) => `model.layers.{i}.self_attn.${p}.bias`));
  assert.equal(layer['self_attn.o_proj.bias'], 'model.layers.{i}.self_attn.o_proj.bias');
  assert.deepEqual(layer['mlp.gate_up_proj.bias'], ['model.layers.{i}.mlp.gate_proj.bias', 'model.layers.{i}.mlp.up_proj.bias']);
  assert.equal(layer['mlp.down_proj.bias'], 'model.layers.{i}.mlp.down_proj.bias');
});

test('Llama 2 style: no rope_scaling, defaults (kv heads = heads, float32, tie false)', () => {
  const raw: HfConfig = {
    architectures: ['LlamaForCausalLM'], hidden_size: 64, intermediate_size: 128, num_attention_heads: 4, num_hidden_layers: 2,
    max_position_embeddings: 4096, vocab_size: 100, rope_scaling: null,
  };
  const spec = parseModelConfig(raw);
  assert.equal(spec.numKvHeads, 4);
  assert.equal(spec.headDim, 16);
  assert.deepEqual(spec.rope, { type: 'default', theta: 10000, rotaryDim: 16, style: 'neox', factor: 1 });
  assert.equal(spec.torchDtype, 'float32');
  assert.equal(spec.tieWordEmbeddings, false);
  assert.equal(spec.norm.eps, 1e-6);
  assert.equal(spec.bosTokenId, 1); // LlamaConfig defaults
  assert.deepEqual(spec.eosTokenIds, [2]);
  // without "architectures" the family is found by model_type
  assert.equal(parseModelConfig({ ...without(raw, 'architectures'), model_type: 'llama' }).architecture, 'LlamaForCausalLM');
});

test('tie_word_embeddings true: spec says so and the weight map has no lm_head', () => {
  const spec = parseModelConfig({ ...QWEN25_7B, tie_word_embeddings: true });
  assert.equal(spec.tieWordEmbeddings, true);
  const map = getFamily('Qwen2ForCausalLM').weightMap(spec);
  assert.equal(map.global['lm_head.weight'], undefined);
  assert.equal(map.global['embed_tokens.weight'], 'model.embed_tokens.weight');
});

test('Qwen2.5: q/k/v biases, no o bias, use_sliding_window false -> no window', () => {
  const spec = parseModelConfig(QWEN25_7B);
  assert.equal(spec.family, 'qwen2');
  assert.deepEqual(spec.bias, { qkv: true, o: false, mlp: false, lmHead: false });
  assert.equal(spec.slidingWindow, null);
  assert.equal(spec.headDim, 128);
  assert.equal(spec.numKvHeads, 4);
  assert.equal(spec.rope!.theta, 1e6);
  assert.deepEqual(spec.eosTokenIds, [151645]);
  assert.equal(spec.norm.eps, 1e-6);
  const { layer } = getFamily('Qwen2ForCausalLM').weightMap(spec);
  assert.deepEqual(layer['self_attn.qkv_proj.bias'], ['q_proj', 'k_proj', 'v_proj'].map((p) => `model.layers.{i}.self_attn.${p}.bias`));
  assert.equal(layer['self_attn.o_proj.bias'], undefined);
  assert.equal(layer['mlp.gate_up_proj.bias'], undefined);
});

test('Qwen2.5 with YaRN rope_scaling (4.x "type" key)', () => {
  const spec = parseModelConfig({ ...QWEN25_7B, rope_scaling: { factor: 4.0, original_max_position_embeddings: 32768, type: 'yarn' } });
  assert.deepEqual(spec.rope, {
    type: 'yarn', theta: 1e6, rotaryDim: 128, style: 'neox', factor: 4, originalMaxPositionEmbeddings: 32768, betaFast: 32, betaSlow: 1, truncate: true,
  });
});

test('Qwen2 sliding window: all layers -> window, some layers -> unsupported', () => {
  const all = parseModelConfig({ ...QWEN25_7B, use_sliding_window: true, sliding_window: 4096, max_window_layers: 0 });
  assert.equal(all.slidingWindow, 4096);
  throwsCode(() => parseModelConfig({ ...QWEN25_7B, use_sliding_window: true, sliding_window: 4096, max_window_layers: 21 }), 'PGN_ERR_UNSUPPORTED_FEATURE');
  // every layer below max_window_layers uses full attention
  assert.equal(parseModelConfig({ ...QWEN25_7B, use_sliding_window: true, max_window_layers: 28 }).slidingWindow, null);
});

test('Mistral: sliding_window 4096, null, or absent (MistralConfig default 4096); head_dim null or explicit', () => {
  const v01 = parseModelConfig(MISTRAL_7B);
  assert.equal(v01.family, 'mistral');
  assert.equal(v01.slidingWindow, 4096);
  assert.equal(v01.headDim, 128);
  assert.deepEqual(v01.bias, { qkv: false, o: false, mlp: false, lmHead: false });
  assert.deepEqual(v01.eosTokenIds, [2]);
  assert.equal(v01.norm.eps, 1e-5);
  assert.equal(parseModelConfig({ ...MISTRAL_7B, sliding_window: null, head_dim: null }).slidingWindow, null);
  assert.equal(parseModelConfig(without(MISTRAL_7B, 'sliding_window')).slidingWindow, 4096);
  // Mistral-Nemo: head_dim 128 while hidden / heads = 160
  const nemo = parseModelConfig({ ...MISTRAL_7B, hidden_size: 5120, head_dim: 128, sliding_window: null, rope_theta: 1e6 });
  assert.equal(nemo.headDim, 128);
  assert.equal(nemo.rope!.rotaryDim, 128);
  assert.equal(nemo.attentionScale, 1 / Math.sqrt(128));
  assert.deepEqual(getFamily('MistralForCausalLM').weightMap(v01), getFamily('LlamaForCausalLM').weightMap({ ...v01, family: 'llama' }));
});

test('RoPE variants: linear / dynamic (4.x "type"), partial_rotary_factor, unknown type', () => {
  const lin = parseModelConfig({ ...MISTRAL_7B, rope_scaling: { type: 'linear', factor: 2 } });
  assert.deepEqual(lin.rope, { type: 'linear', theta: 10000, rotaryDim: 128, style: 'neox', factor: 2 });
  const dyn = parseModelConfig({ ...MISTRAL_7B, rope_scaling: { rope_type: 'dynamic', factor: 2 } });
  assert.equal(dyn.rope!.originalMaxPositionEmbeddings, 32768);
  const partial = parseModelConfig({ ...LLAMA31_V5, rope_parameters: { rope_type: 'default', rope_theta: 1e4, partial_rotary_factor: 0.5 } });
  assert.equal(partial.rope!.rotaryDim, 64);
  // 5.x yarn without factor: implied by max_position_embeddings / original
  const yarn = parseModelConfig({ ...QWEN25_7B, max_position_embeddings: 131072, rope_parameters: { rope_type: 'yarn', rope_theta: 1e6, original_max_position_embeddings: 32768 } });
  assert.equal(yarn.rope!.factor, 4);
  throwsCode(() => parseModelConfig({ ...LLAMA31_V5, rope_parameters: { full_attention: { rope_type: 'default' } } }), 'PGN_ERR_UNSUPPORTED_FEATURE');
  throwsCode(() => parseModelConfig({ ...LLAMA31_V4, rope_scaling: { type: 'longrope', factor: 2 } }), 'PGN_ERR_UNSUPPORTED_FEATURE', (e) => {
    assert.match(e.message, /longrope/);
    assert.match(e.message, /llama3/); // lists the supported types
  });
  throwsCode(() => parseModelConfig({ ...LLAMA31_V4, rope_scaling: { rope_type: 'llama3', factor: 8 } }), 'PGN_ERR_CONFIG_INVALID', (e) => {
    assert.equal(e.details.field, 'rope_scaling.low_freq_factor');
  });
});

test('supportedArchitectures and getFamily', () => {
  assert.deepEqual(supportedArchitectures(), [
    'BloomForCausalLM', 'FalconForCausalLM', 'GPT2LMHeadModel', 'GPTJForCausalLM', 'GPTNeoXForCausalLM', 'Gemma2ForCausalLM',
    'GemmaForCausalLM', 'LlamaForCausalLM', 'MistralForCausalLM', 'MixtralForCausalLM', 'MptForCausalLM', 'OPTForCausalLM',
    'Phi3ForCausalLM', 'Qwen2ForCausalLM', 'Qwen3ForCausalLM', 'Starcoder2ForCausalLM',
  ]);
  assert.equal(getFamily('Qwen2ForCausalLM').name, 'qwen2');
  throwsCode(() => getFamily('GPTBigCodeForCausalLM'), 'PGN_ERR_UNKNOWN_ARCHITECTURE');
});

test('errors: unknown architecture lists the supported ones', () => {
  throwsCode(() => parseModelConfig({ ...LLAMA31_V4, architectures: ['FancyNewForCausalLM'] }), 'PGN_ERR_UNKNOWN_ARCHITECTURE', (e) => {
    assert.match(e.message, /FancyNewForCausalLM/);
    for (const a of ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM']) assert.ok(e.message.includes(a), a);
    assert.equal(e.details.architecture, 'FancyNewForCausalLM');
  });
});

test('errors: missing or invalid required fields name the field', () => {
  for (const field of ['hidden_size', 'num_hidden_layers', 'num_attention_heads', 'vocab_size', 'intermediate_size']) {
    throwsCode(() => parseModelConfig(without(LLAMA31_V4, field)), 'PGN_ERR_CONFIG_INVALID', (e) => {
      assert.equal(e.details.field, field);
      assert.ok(e.message.includes(field), e.message);
    });
  }
  throwsCode(() => parseModelConfig({ ...LLAMA31_V4, hidden_size: '4096' }), 'PGN_ERR_CONFIG_INVALID', (e) => assert.equal(e.details.field, 'hidden_size'));
  throwsCode(() => parseModelConfig({ ...LLAMA31_V4, torch_dtype: 'float64' }), 'PGN_ERR_CONFIG_INVALID', (e) => assert.equal(e.details.field, 'torch_dtype'));
  throwsCode(() => parseModelConfig({ ...LLAMA31_V4, num_key_value_heads: 5 }), 'PGN_ERR_CONFIG_INVALID', (e) => assert.equal(e.details.field, 'num_key_value_heads'));
  throwsCode(() => parseModelConfig(without(without(LLAMA31_V4, 'architectures'), 'model_type')), 'PGN_ERR_CONFIG_INVALID', (e) => assert.equal(e.details.field, 'architectures'));
});

test('errors: heads must divide hidden when head_dim is absent', () => {
  throwsCode(() => parseModelConfig({ ...LLAMA31_V4, num_attention_heads: 30, num_key_value_heads: 10 }), 'PGN_ERR_CONFIG_INVALID', (e) => {
    assert.equal(e.details.field, 'hidden_size');
    assert.match(e.message, /num_attention_heads/);
  });
  // with head_dim given, hidden / heads need not be whole
  assert.equal(parseModelConfig({ ...LLAMA31_V4, num_attention_heads: 30, num_key_value_heads: 10, head_dim: 128 }).headDim, 128);
});

test('loadModelConfig: reads config.json; missing file and bad JSON name the path', () => {
  withDir({ 'config.json': JSON.stringify(LLAMA31_V4) }, (dir) => {
    const { spec, raw } = loadModelConfig(dir);
    assert.deepEqual(spec, parseModelConfig(LLAMA31_V4));
    assert.equal(raw.model_type, 'llama');
  });
  withDir({}, (dir) => {
    throwsCode(() => loadModelConfig(dir), 'PGN_ERR_CONFIG_NOT_FOUND', (e) => {
      assert.ok(e.message.includes(join(dir, 'config.json')), e.message);
      assert.equal(e.details.path, join(dir, 'config.json'));
    });
  });
  withDir({ 'config.json': '{"architectures": ["LlamaForCausalLM"],' }, (dir) => {
    throwsCode(() => loadModelConfig(dir), 'PGN_ERR_CONFIG_INVALID', (e) => assert.ok(e.message.includes(join(dir, 'config.json')), e.message));
  });
  withDir({ 'config.json': '[1, 2]' }, (dir) => throwsCode(() => loadModelConfig(dir), 'PGN_ERR_CONFIG_INVALID'));
  withDir({ 'config.json': JSON.stringify(without(LLAMA31_V4, 'hidden_size')) }, (dir) => {
    throwsCode(() => loadModelConfig(dir), 'PGN_ERR_CONFIG_INVALID', (e) => {
      assert.equal(e.details.field, 'hidden_size');
      assert.ok(e.message.includes(join(dir, 'config.json')) && e.message.includes('hidden_size'), e.message);
    });
  });
});

test('loadGenerationConfig: absent -> null, fields, eos as int or list, bad JSON', () => {
  withDir({}, (dir) => assert.equal(loadGenerationConfig(dir), null));
  const llama31 = { bos_token_id: 128000, do_sample: true, eos_token_id: [128001, 128008, 128009], temperature: 0.6, top_p: 0.9, transformers_version: '4.42.3' };
  withDir({ 'generation_config.json': JSON.stringify(llama31) }, (dir) => {
    assert.deepEqual(loadGenerationConfig(dir), { eosTokenIds: [128001, 128008, 128009], bosTokenId: 128000, temperature: 0.6, topP: 0.9, doSample: true });
  });
  const qwen = { bos_token_id: 151643, pad_token_id: 151643, do_sample: true, eos_token_id: 151645, repetition_penalty: 1.05, temperature: 0.7, top_p: 0.8, top_k: 20, max_new_tokens: 512 };
  withDir({ 'generation_config.json': JSON.stringify(qwen) }, (dir) => {
    assert.deepEqual(loadGenerationConfig(dir), {
      eosTokenIds: [151645], bosTokenId: 151643, temperature: 0.7, topP: 0.8, topK: 20, repetitionPenalty: 1.05, maxNewTokens: 512, doSample: true,
    });
  });
  withDir({ 'generation_config.json': '{"eos_token_id": 2' }, (dir) => {
    throwsCode(() => loadGenerationConfig(dir), 'PGN_ERR_CONFIG_INVALID', (e) => assert.ok(e.message.includes('generation_config.json'), e.message));
  });
  withDir({ 'generation_config.json': '{"top_k": "many"}' }, (dir) => {
    throwsCode(() => loadGenerationConfig(dir), 'PGN_ERR_CONFIG_INVALID', (e) => assert.equal(e.details.field, 'top_k'));
  });
});
