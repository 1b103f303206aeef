#!/usr/bin/env bash
# Nsight Compute over single launches of the decode kernels that run below copy bandwidth: the quantized GEMVs
# (ops-bench rows, M = 1) beside the BF16 GEMV, and the sampler at 1024 rows; with the warps' stall reasons
# (smsp__average_warps_issue_stalled_*: cycles a warp waits for that reason per instruction issued). Hardware counters need a
# Firecracker machine (KINDS.md); clocks are left alone (--clock-control none). Run on the GPU machine after
# `source .devslim/boot.sh`; reports go to $OUT/ncu-<name>.txt.
#   bash bench/ncu-kernels.sh [name ...]   (default: all of the list below)
# SASS=1 also samples where the warps stall, per instruction: $OUT/ncu-<name>-sass.csv (ncu --page source; columns
# include the stall samples by reason), for reading beside `cuobjdump -sass`.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-out}; mkdir -p "$out"
NCU="timeout 120 ncu --clock-control none --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats --section ComputeWorkloadAnalysis --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\\.ratio"
OPS="node dist/src/bench/ops-bench.js --only"
# name | kernel regex | ops-bench row filter (its first launch is the M = 1 row)
cases=(
  "int4-gate_up|qgemv_int4|qgemm int4 gate_up_proj"
  "int4-o_proj|qgemv_int4|qgemm int4 o_proj"
  "int4-qkv|qgemv_int4|qgemm int4 qkv_proj"
  "fp8xq-o_proj|qgemv_fp8q|qgemm fp8+xq o_proj"
  "fp8xq-down|qgemv_fp8q|qgemm fp8+xq down_proj"
  "fp8xq-qkv|qgemv_fp8q|qgemm fp8+xq qkv_proj"
  "fp8-o_proj|qgemv_fp8_|qgemm fp8 o_proj"
  "bf16-o_proj|gemv_|qgemm bf16 o_proj"
)
want=" ${*:-all} "
for c in "${cases[@]}"; do
  IFS='|' read -r name kernel filter <<< "$c"
  [[ "$want" == " all " || "$want" == *" $name "* ]] || continue
  if [[ "${SASS:-0}" == 1 ]]; then
    $NCU --section SourceCounters --import-source no -o "$out/ncu-$name" -f -k "regex:$kernel" $OPS "$filter" > "$out/ncu-$name.log" 2>&1
    echo "$name: exit $?"
    ncu --import "$out/ncu-$name.ncu-rep" > "$out/ncu-$name.txt" 2>&1
    ncu --import "$out/ncu-$name.ncu-rep" --page source --csv --print-source sass > "$out/ncu-$name-sass.csv" 2>&1
    rm -f "$out/ncu-$name.ncu-rep"
  else
    $NCU -k "regex:$kernel" $OPS "$filter" > "$out/ncu-$name.txt" 2>&1
    echo "$name: exit $?"
  fi
done
if [[ "$want" == " all " || "$want" == *" sample "* ]]; then
  $NCU -k regex:sample_rows --launch-skip 17 node dist/src/cli/main.js bench latency --shape llama-3.1-8b --random-weights --device cuda --quantization fp8 --batch 1024 --isl 128 --osl 6 --prefill 128 > "$out/ncu-sample.txt" 2>&1
  echo "sample: exit $?"
fi
