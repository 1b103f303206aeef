#!/usr/bin/env bash
# cuBLASLt autotuning A/B (PEREGRINE_GEMM_AUTOTUNE=1: the fastest of the heuristic's first 8 algorithms, timed on
# first use, for decode-sized and power-of-two M; lt-autotune.ts): the GPU tests of it, then 8B shape, random
# weights, BF16 batch 1 / 8 / 64 (the M = 1 GEMVs where cuBLASLt's first pick reaches 72-75% of copy BW) and
# prefill 2048, and FP8 + FP8 KV batch 1024 (o_proj at ~900 TFLOP/s against ~1,350 for the other linears),
# alternating twice. Run on the GPU machine after `source .devslim/boot.sh`; every step is bounded by `timeout`.
set -u
cd "$(dirname "$0")/.."
timeout 120 node --test dist/test/gpu/cuda-ops.test.js 2>&1 | grep -E '^# (pass|fail)|^not ok|rror' | head -6
L="node dist/src/cli/main.js bench latency --shape llama-3.1-8b --random-weights --device cuda --isl 128 --osl 32"
rows='copy bandwidth|^\| [0-9]+ +\| [0-9.]+ +\| [0-9.]+ +\| '
for r in 1 2; do
  for tune in 0 1; do
    echo "== PEREGRINE_GEMM_AUTOTUNE=$tune (run $r)"
    PEREGRINE_GEMM_AUTOTUNE=$tune timeout 120 $L --batch 1,8,64 --prefill 128,2048 2>&1 | grep -E "$rows"
    PEREGRINE_GEMM_AUTOTUNE=$tune timeout 120 $L --quantization fp8 --kv-cache-dtype fp8 --batch 1024 --prefill 2048 2>&1 | grep -E "$rows"
  done
done
