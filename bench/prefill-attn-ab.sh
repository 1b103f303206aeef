#!/usr/bin/env bash
# Prefill attention A/B: one 16-row query tile a warp (default: 4 or 8 warps, 64-key tiles) against two
# (PEREGRINE_PREFILL_MT=2: 4 warps, 32 query rows each, 32-key tiles; each K / V fragment read from shared memory
# serves twice the rows; head size 128), 8B shape, random weights, prompts of 2048 and 8192 tokens; BF16, then FP8
# with the FP8 KV cache; alternating twice. First the GPU suites over the variant. Run on the GPU machine after
# `source .devslim/boot.sh`; every step is bounded by `timeout`.
set -u
cd "$(dirname "$0")/.."
t() { env "${@:2}" timeout 150 node --test "dist/test/gpu/$1.test.js" 2>&1 | grep -E '^# (pass|fail)|^not ok|rror' | head -6; }
echo "-- cuda-attention (both)"; t cuda-attention
echo "-- kv-fp8, PEREGRINE_PREFILL_MT=2"; t kv-fp8 PEREGRINE_PREFILL_MT=2
echo "-- cuda-models, PEREGRINE_PREFILL_MT=2"; t cuda-models PEREGRINE_PREFILL_MT=2
L="node dist/src/cli/main.js bench latency --shape llama-3.1-8b --random-weights --device cuda --batch 1 --isl 128 --osl 4 --prefill 2048,8192"
for q in "" "--quantization fp8 --kv-cache-dtype fp8"; do
  for r in 1 2; do
    for mt in 1 2; do
      echo "== ${q:-bf16} PEREGRINE_PREFILL_MT=$mt (run $r)"
      PEREGRINE_PREFILL_MT=$mt timeout 120 $L $q 2>&1 | grep -E '^\| (2048|8192) '
      echo "[exit ${PIPESTATUS[0]}]"
    done
  done
done
