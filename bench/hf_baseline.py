#!/usr/bin/env python3
"""HF transformers baseline for `peregrine bench latency`: eager transformers, BF16, random
weights of a real shape (default Llama-3.1-8B), greedy decode with the KV cache.
Prints one JSON line: {"decode_ms": {batch: ms/step}, "prefill_ms": {tokens: ms}, ...}.
Run on the GPU machine (python3 with torch + transformers):
  python3 bench/hf_baseline.py --batch 1,64,256 --isl 128 --osl 32
"""
import argparse, json, time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
                         rope_theta=500000.0,
                         rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                           original_max_position_embeddings=8192)),
}


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, (time.perf_counter() - t0) * 1000


@torch.inference_mode()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-3.1-8b")
    ap.add_argument("--batch", default="1,64,256")
    ap.add_argument("--isl", type=int, default=128)
    ap.add_argument("--osl", type=int, default=32)
    ap.add_argument("--prefill", default="128,2048")
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPES[a.shape])
    cfg._attn_implementation = "eager"
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    res = {"shape": a.shape, "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "attn": "eager", "decode_ms": {}, "prefill_ms": {}}
    for b in [int(x) for x in a.batch.split(",")]:
        ids = torch.randint(1000, cfg.vocab_size - 1, (b, a.isl), device="cuda")
        out = model(input_ids=ids, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        steps = []
        for _ in range(a.osl):
            out, ms = timed(lambda: model(input_ids=nxt, past_key_values=past, use_cache=True))
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            steps.append(ms)
        steps = sorted(steps[3:])
        res["decode_ms"][b] = steps[len(steps) // 2]
        del past, out
        torch.cuda.empty_cache()
    for t in [int(x) for x in a.prefill.split(",")]:
        ids = torch.randint(1000, cfg.vocab_size - 1, (1, t), device="cuda")
        model(input_ids=ids)
        times = sorted(timed(lambda: model(input_ids=ids))[1] for _ in range(3))
        res["prefill_ms"][t] = times[1]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
