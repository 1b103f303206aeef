// Writes a tiny random-weight Llama-style checkpoint into a temp folder (no tokenizer),
// for tests that need a model but not HF parity.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeSafetensors } from '../../src/weights/safetensors-writer.js';

export interface TinyLlamaOptions {
  hidden?: number;
  layers?: number;
  heads?: number;
  kvHeads?: number;
  ffn?: number;
  vocab?: number;
  maxPositions?: number;
  seed?: number;
  qkvBias?: boolean;
  architecture?: string;
}

/** xorshift-based normal samples, deterministic per seed */
function randn(n: number, scale: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  const u = () => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return (s + 0.5) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u()) * scale;
  return out;
}

export function writeTinyLlama(opts: TinyLlamaOptions = {}): string {
  const H = opts.hidden ?? 64, L = opts.layers ?? 2, nh = opts.heads ?? 4, nkv = opts.kvHeads ?? 2;
  const F = opts.ffn ?? 128, V = opts.vocab ?? 256, hd = H / nh;
  let seed = opts.seed ?? 1234;
  const dir = mkdtempSync(join(tmpdir(), 'pgn-tiny-'));
  const tensors: Record<string, { dtype: 'F32'; shape: number[]; data: Uint8Array }> = {};
  const add = (name: string, shape: number[], scale: number, offset = 0) => {
    const d = randn(shape.reduce((a, b) => a * b, 1), scale, seed++);
    if (offset) for (let i = 0; i < d.length; i++) d[i]! += offset;
    tensors[name] = { dtype: 'F32', shape, data: new Uint8Array(d.buffer) };
  };
  add('model.embed_tokens.weight', [V, H], 1);
  for (let i = 0; i < L; i++) {
    const p = `model.layers.${i}.`;
    add(p + 'input_layernorm.weight', [H], 0.1, 1);
    add(p + 'post_attention_layernorm.weight', [H], 0.1, 1);
    add(p + 'self_attn.q_proj.weight', [nh * hd, H], 1 / Math.sqrt(H));
    add(p + 'self_attn.k_proj.weight', [nkv * hd, H], 1 / Math.sqrt(H));
    add(p + 'self_attn.v_proj.weight', [nkv * hd, H], 1 / Math.sqrt(H));
    if (opts.qkvBias) {
      add(p + 'self_attn.q_proj.bias', [nh * hd], 0.1);
      add(p + 'self_attn.k_proj.bias', [nkv * hd], 0.1);
      add(p + 'self_attn.v_proj.bias', [nkv * hd], 0.1);
    }
    add(p + 'self_attn.o_proj.weight', [H, nh * hd], 1 / Math.sqrt(nh * hd));
    add(p + 'mlp.gate_proj.weight', [F, H], 1 / Math.sqrt(H));
    add(p + 'mlp.up_proj.weight', [F, H], 1 / Math.sqrt(H));
    add(p + 'mlp.down_proj.weight', [H, F], 1 / Math.sqrt(F));
  }
  add('model.norm.weight', [H], 0.1, 1);
  add('lm_head.weight', [V, H], 1 / Math.sqrt(H));
  writeSafetensors(join(dir, 'model.safetensors'), tensors);
  const config = {
    architectures: [opts.architecture ?? 'LlamaForCausalLM'],
    model_type: opts.architecture === 'Qwen2ForCausalLM' ? 'qwen2' : 'llama',
    hidden_size: H, intermediate_size: F, num_hidden_layers: L, num_attention_heads: nh, num_key_value_heads: nkv,
    vocab_size: V, max_position_embeddings: opts.maxPositions ?? 512, rms_norm_eps: 1e-5, rope_theta: 10000,
    tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2, torch_dtype: 'float32', hidden_act: 'silu',
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  return dir;
}
