#!/usr/bin/env bash
# The side-by-side benchmark on one GPU, in one command: ours and the HF + PEFT peers (eager and
# torch.compile) on the Llama-3.2-1B shape, random init, LoRA r=16 alpha=32 on all seven projections,
# seq 1024, micro-batch 8, AdamW. Ours trains on data/corpus packed into 1024-token rows.
#   make && bash bench/run.sh [steps]
set -uo pipefail
cd "$(dirname "$0")/.."
steps=${1:-30}
nvidia-smi --query-gpu=name --format=csv,noheader
./train --preset llama-3.2-1b --data data/corpus --eval-data data/corpus --seq 1024 --micro-batch 8 --steps "$steps" \
    --lora-rank 16 --lora-alpha 32 --log-every 10 --sample 0 --out /tmp/bench_out 2>&1 | grep -E "^step|memory|tokens/s|peak" | tail -6
python3 bench/hf_peer.py eager 20 2>&1 | grep peer
python3 bench/hf_peer.py compile 20 2>&1 | grep peer
