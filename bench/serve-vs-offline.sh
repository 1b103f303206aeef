#!/usr/bin/env bash
# Issue 4's serving target: `bench serve` at rate inf against `peregrine serve` reaches >= 95%
# of the offline `bench throughput` number for the same shape, engine limits and isl/osl.
# Usage: bash bench/serve-vs-offline.sh [shape] [num-requests] [isl] [osl] [extra engine flags...]
# (GPU machine: after `source .devslim/boot.sh`; on the CPU use shape tiny-llama and --device cpu.)
set -euo pipefail
shape=${1:-llama-3.1-8b}; n=${2:-512}; isl=${3:-128}; osl=${4:-128}; shift $(( $# < 4 ? $# : 4 )) || true
engine=(--device "${PEREGRINE_BENCH_DEVICE:-cuda}" --max-num-seqs 256 --max-num-batched-tokens 8192 "$@")
cli="node dist/src/cli/main.js"
# sampled at temperature 1 like the `bench serve` client's requests (bench throughput is greedy by default)
$cli bench throughput --shape "$shape" --random-weights "${engine[@]}" --num-requests "$n" --isl "$isl" --osl "$osl" --temperature 1
log=$(mktemp)
$cli serve --shape "$shape" --random-weights "${engine[@]}" --port 0 --max-waiting-requests 100000 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 600); do grep -q 'listening on' "$log" && break; kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }; sleep 0.5; done
url=$(grep -o 'listening on [^ ]*' "$log" | cut -d' ' -f3)
vocab=$(node -e "import('./dist/src/bench/shapes.js').then(m => console.log(m.SHAPES['$shape'].vocab_size))")
# a warm-up pass captures the decode graphs, as the offline run does before it times
$cli bench serve --url "$url" --num-prompts 64 --rate inf --isl "$isl" --osl 16 --vocab-size "$vocab" --json >/dev/null
$cli bench serve --url "$url" --num-prompts "$n" --rate inf --isl "$isl" --osl "$osl" --vocab-size "$vocab"
