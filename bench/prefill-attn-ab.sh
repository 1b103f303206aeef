#!/usr/bin/env bash
# Prefill attention A/B: one K / V tile pair (default) against two, the next pair loading while one computes
# (PEREGRINE_PREFILL_STAGES=2, head sizes <= 128), 8B shape, random weights, prompts of 2048 and 8192 tokens;
# BF16, then FP8 with the FP8 KV cache; alternating twice. Run on the GPU machine after `source .devslim/boot.sh`.
set -u
cd "$(dirname "$0")/.."
L="node dist/src/cli/main.js bench latency --shape llama-3.1-8b --random-weights --device cuda --batch 1 --isl 128 --osl 4 --prefill 2048,8192"
for q in "" "--quantization fp8 --kv-cache-dtype fp8"; do
  for r in 1 2; do
    for st in 1 2; do
      echo "== ${q:-bf16} PEREGRINE_PREFILL_STAGES=$st (run $r)"
      PEREGRINE_PREFILL_STAGES=$st timeout 120 $L $q 2>&1 | grep -E '^\| (2048|8192) '
      echo "[exit ${PIPESTATUS[0]}]"
    done
  done
done
