#!/usr/bin/env bash
# Batch-1 decode (issue 3): the ring-buffered GEMV for every decode linear, with SiLU * up fused into the
# down_proj's prologue (PEREGRINE_GEMV=ring; cuda-gemv.ts, kernels/quant_gemv.cu dense kind), against the
# default (our register GEMV for qkv / o_proj, cuBLASLt for gate_up / down, a separate silu*mul), on one GPU.
# Run on the GPU machine after `source .devslim/boot.sh`; every step is bounded by `timeout`.
#   1. correctness: test/gpu/cuda-gemv.test.js (ring GEMV and fusedLinear against the CPU reference and the separate
#      ops), then every golden model fixture with PEREGRINE_GEMV=ring (fused layers end to end)
#   2. per linear: ops-bench --gemv (cuBLASLt, register GEMV and ring GEMV, us and % of copy bandwidth)
#   3. the step: bench latency at batch 1 and 8, default / ring / ring + PDL, twice, alternating; FP8 without /
#      with PDL and with every FP8 decode linear on the decode GEMV (PEREGRINE_QGEMV_FP8_MAX_N)
set -u
cd "$(dirname "$0")/.."
b() { local s; s=$(date +%s); timeout "$1" "${@:2}"; echo "[exit $? after $(( $(date +%s) - s )) s]"; }
b 300 node --test dist/test/gpu/cuda-gemv.test.js 2>&1 | grep -E '^# (pass|fail)|^not ok|^\[exit'
b 300 env PEREGRINE_GEMV=ring node --test dist/test/gpu/cuda-models.test.js 2>&1 | grep -E '^# (pass|fail)|^not ok|^\[exit'
b 240 node dist/src/bench/ops-bench.js --gemv 2>&1 | grep -E '^\||^#|^\[exit'
L="node dist/src/cli/main.js bench latency --shape llama-3.1-8b --random-weights --device cuda --batch 1,8 --isl 128 --osl 32 --prefill 128"
for r in 1 2; do
  for v in "PEREGRINE_GEMV=default" "PEREGRINE_GEMV=ring" "PEREGRINE_GEMV=ring PEREGRINE_PDL=1"; do
    echo "== $v (run $r)"
    env $v timeout 120 $L 2>&1 | grep -E '^\| (1|8|128) '
  done
done
# FP8: every decode linear on the ring GEMV (qgemv) instead of quant_fp8_mma for qkv / gate_up, with and without PDL
for r in 1 2; do
  for v in "PEREGRINE_PDL=0" "PEREGRINE_PDL=1" "PEREGRINE_PDL=1 PEREGRINE_QGEMV_FP8_MAX_N=1000000"; do
    echo "== fp8 $v (run $r)"
    env $v timeout 120 $L --quantization fp8 2>&1 | grep -E '^\| (1|8|128) '
  done
done
