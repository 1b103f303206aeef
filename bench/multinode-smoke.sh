#!/usr/bin/env bash
# Two "nodes" of one GPU each on this host (CUDA_VISIBLE_DEVICES=0 and =1), NCCL over loopback sockets as
# between real nodes: `peregrine generate --tp 2 --nnodes 2` on both, each bounded by a timeout, then both
# outputs (NCCL_DEBUG=INFO by default). The first thing to run when the multi-node GPU suite hangs.
# Usage: bash bench/multinode-smoke.sh [MODEL_DIR] [SECONDS]   (from the repo root, after boot.sh)
set -u
cd "$(dirname "$0")/.."
model=${1:-test/fixtures/models/llama-linear}
limit=${2:-90}
out=${OUT:-out}; mkdir -p "$out"
port=$(( 20000 + RANDOM % 20000 ))
export NCCL_NVLS_ENABLE=0 NCCL_SOCKET_IFNAME=lo NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_IB_DISABLE=1
export NCCL_DEBUG=${NCCL_DEBUG:-INFO} PEREGRINE_NODE_TIMEOUT_MS=$(( limit * 1000 - 10000 ))
args=(generate --model "$model" --prompt-ids 1,2,3,4,5 --max-tokens 8 --temperature 0 --ignore-eos --device cuda --tp 2 --nnodes 2 --master-addr 127.0.0.1 --master-port "$port")
t0=$(date +%s)
CUDA_VISIBLE_DEVICES=1 timeout -s KILL "$limit" node dist/src/cli/main.js "${args[@]}" --node-rank 1 > "$out/node1.out" 2> "$out/node1.err" &
n1=$!
CUDA_VISIBLE_DEVICES=0 timeout -s KILL "$limit" node dist/src/cli/main.js "${args[@]}" --node-rank 0 --json > "$out/node0.out" 2> "$out/node0.err"
rc0=$?
wait $n1; rc1=$?
echo "multinode smoke: node 0 exit $rc0, node 1 exit $rc1 in $(( $(date +%s) - t0 )) s (137 = killed at ${limit} s)"
for f in node0.out node0.err node1.out node1.err; do echo "--- $f"; grep -v '^\[#' "$out/$f" | tail -40; done
