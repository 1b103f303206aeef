#!/usr/bin/env bash
# Decode attention A/B: the CUDA-core kernel (attention_decode.cu) against the tensor-core GQA kernel
# (attention_decode_tc.cu; by default from 3 waves of its blocks), forced each way with PEREGRINE_DECODE_ATTN,
# and with an FP8 KV cache also its 4-stage ring (PEREGRINE_DECODE_TC_FP8_STAGES=4). 8B shape, random BF16
# weights, contexts ~1000 at batch 64, 128 and 256. First the GPU suites the variants touch.
# Run on the GPU machine after `source .devslim/boot.sh`; every step is bounded by `timeout`.
set -u
cd "$(dirname "$0")/.."
t() { timeout 120 node --test "dist/test/gpu/$1.test.js" 2>&1 | grep -E '^# (pass|fail)|^not ok|error:' | head -6; }
echo "-- cuda-attention (its own tc and two-stage prefill tests)"; t cuda-attention
for st in 2 4; do echo "-- kv-fp8, tc, fp8 stages $st"; PEREGRINE_DECODE_ATTN=tc PEREGRINE_DECODE_TC_FP8_STAGES=$st t kv-fp8; done
echo "-- kv-fp8, two-stage prefill"; PEREGRINE_PREFILL_STAGES=2 t kv-fp8
echo "-- cuda-models, tc"; PEREGRINE_DECODE_ATTN=tc t cuda-models
L="node dist/src/cli/main.js bench latency --shape llama-3.1-8b --random-weights --device cuda --batch 64,128,256 --isl 1000 --osl 32 --prefill 128"
run() { # $1: kv cache dtype, then the environment of the variant
  local kv=$1; shift
  echo "== kv $kv, $*"
  env "$@" timeout 150 $L --kv-cache-dtype "$kv" 2>&1 | grep -E '^\| (64|128|256) '
  echo "[exit ${PIPESTATUS[0]}]"
}
run auto PEREGRINE_DECODE_ATTN=simt
run auto PEREGRINE_DECODE_ATTN=tc
run fp8 PEREGRINE_DECODE_ATTN=simt
run fp8 PEREGRINE_DECODE_ATTN=tc
run fp8 PEREGRINE_DECODE_ATTN=tc PEREGRINE_DECODE_TC_FP8_STAGES=4
