#!/usr/bin/env bash
# Decode attention A/B: the CUDA-core kernel (attention_decode.cu, default) against the tensor-core GQA kernel
# (attention_decode_tc.cu, PEREGRINE_DECODE_ATTN=tc), 8B shape, random weights, contexts ~1000 at batch 1, 64
# and 256, with a BF16 and an FP8 KV cache. Run on the GPU machine after `source .devslim/boot.sh`.
set -u
cd "$(dirname "$0")/.."
L="node dist/src/cli/main.js bench latency --shape llama-3.1-8b --random-weights --device cuda --batch 1,64,256 --isl 1000 --osl 32 --prefill 128"
for kv in auto fp8; do
  for v in simt tc; do
    echo "== kv $kv, PEREGRINE_DECODE_ATTN=$v"
    PEREGRINE_DECODE_ATTN=$v timeout 150 $L --kv-cache-dtype $kv 2>&1 | grep -E '^\| (1|64|256) '
    echo "[exit ${PIPESTATUS[0]}]"
  done
done
