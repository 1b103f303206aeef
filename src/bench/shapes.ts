/** Real model shapes (HF config.json contents) for benchmarks with random weights. */
import type { HfConfig } from '../models/config.js';

const llama31 = (hidden: number, layers: number, heads: number, ffn: number): HfConfig => ({
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  hidden_size: hidden,
  intermediate_size: ffn,
  num_hidden_layers: layers,
  num_attention_heads: heads,
  num_key_value_heads: 8,
  vocab_size: 128256,
  max_position_embeddings: 131072,
  rms_norm_eps: 1e-5,
  rope_theta: 500000,
  rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
  tie_word_embeddings: false,
  bos_token_id: 128000,
  eos_token_id: [128001, 128008, 128009],
  torch_dtype: 'bfloat16',
  hidden_act: 'silu',
});

export const SHAPES: Record<string, HfConfig> = {
  'llama-3.1-8b': llama31(4096, 32, 32, 14336),
  'llama-3.1-70b': llama31(8192, 80, 64, 28672),
  /** a small Llama-shaped model for smoke runs of the benchmarks on the CPU */
  'tiny-llama': { ...llama31(256, 2, 8, 512), vocab_size: 1024, num_key_value_heads: 4, max_position_embeddings: 4096 },
};

export function shapeNames(): string[] {
  return Object.keys(SHAPES);
}
