#!/usr/bin/env bash
# Programmatic dependent launch A/B (cuda/pdl.ts): 8B shape, random weights, decode at batch 1 and 8 and a 128-token
# prefill, the variants alternating twice so that drift shows. BF16: off / forced on (plain launch right after a
# cuBLASLt matmul) / forced on after cuBLASLt too; FP8: off / the default (on for quantized linears).
# Run on the GPU machine after `source .devslim/boot.sh`; every run is bounded by `timeout`.
set -u
cd "$(dirname "$0")/.."
L="node dist/src/cli/main.js bench latency --shape llama-3.1-8b --random-weights --device cuda --batch 1,8 --isl 128 --osl 32 --prefill 128"
run() { # $1: quantization (bf16 | fp8), then the environment of the variant
  local q=$1; shift
  local extra=""; [ "$q" = fp8 ] && extra="--quantization fp8"
  echo "== $q ${*:-default}"
  env "$@" timeout 120 $L $extra 2>&1 | grep -E '^\| (1|8|128) '
  echo "[exit ${PIPESTATUS[0]}]"
}
for r in 1 2; do
  run bf16 PEREGRINE_PDL=0
  run bf16 PEREGRINE_PDL=1
  run bf16 PEREGRINE_PDL=1 PEREGRINE_PDL_AFTER_CUBLAS=1
done
for r in 1 2; do
  run fp8 PEREGRINE_PDL=0
  run fp8
done
