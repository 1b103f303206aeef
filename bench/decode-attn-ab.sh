#!/usr/bin/env bash
# Decode attention A/B: the CUDA-core kernel (attention_decode.cu) against the tensor-core GQA kernel
# (attention_decode_tc.cu; by default from 3 waves of its blocks), forced each way with PEREGRINE_DECODE_ATTN,
# with a BF16 and an FP8 KV cache. 8B shape, random BF16
# weights, contexts ~1000 at batch 64, 128 and 256. First the GPU suites the variants touch.
# Run on the GPU machine after `source .devslim/boot.sh`; every step is bounded by `timeout`.
# Usage: bash bench/decode-attn-ab.sh [--no-tests] [BATCHES [ISL [EXTRA BENCH ARGS...]]]
#   e.g. bash bench/decode-attn-ab.sh --no-tests 1024 128 --quantization fp8   (short contexts, large batch)
set -u
cd "$(dirname "$0")/.."
tests=1; [ "${1:-}" = --no-tests ] && { tests=0; shift; }
batches=${1:-64,128,256}; isl=${2:-1000}; shift $(( $# > 2 ? 2 : $# ))
t() { timeout 120 node --test "dist/test/gpu/$1.test.js" 2>&1 | grep -E '^# (pass|fail)|^not ok|error:' | head -6; }
if [ $tests = 1 ]; then
  echo "-- cuda-attention (its own tc and mixed-step tests)"; t cuda-attention
  echo "-- kv-fp8, tc"; PEREGRINE_DECODE_ATTN=tc t kv-fp8
  echo "-- cuda-models, tc"; PEREGRINE_DECODE_ATTN=tc t cuda-models
fi
L="node dist/src/cli/main.js bench latency --shape llama-3.1-8b --random-weights --device cuda --batch $batches --isl $isl --osl 32 --prefill 128 $*"
run() { # $1: kv cache dtype, then the environment of the variant
  local kv=$1; shift
  echo "== kv $kv, $*"
  env "$@" timeout 150 $L --kv-cache-dtype "$kv" 2>&1 | grep -E 'copy bandwidth|^\| [0-9]+ +\| [0-9.]+ +\| [0-9.]+ +\| [0-9.]+ +\| [0-9.]+ +\| [0-9.]+ +\| [0-9.]+ '
  echo "[exit ${PIPESTATUS[0]}]"
}
run auto PEREGRINE_DECODE_ATTN=simt
run auto PEREGRINE_DECODE_ATTN=tc
run fp8 PEREGRINE_DECODE_ATTN=simt
run fp8 PEREGRINE_DECODE_ATTN=tc
