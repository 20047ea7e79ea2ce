#!/usr/bin/env bash
# Where a step's time goes, by kernel family (bench/PROFILE.md): the benchmark's LoRA and full
# fine-tuning runs (Llama-3.2-1B shape, seq 1024, micro-batch 8) with --profile.
#   make && bash bench/profile.sh [steps]
set -uo pipefail
cd "$(dirname "$0")/.."
steps=${1:-5}
nvidia-smi --query-gpu=name --format=csv,noheader
run() {  # run LABEL FLAGS...: the profile table
    local label=$1; shift
    echo "== $label"
    ./train --preset llama-3.2-1b --data data/corpus --eval-data data/qa_eval.jsonl --seq 1024 --micro-batch 8 \
        --steps $((steps + 4)) --log-every 100 --sample 0 --profile "$steps" --out /tmp/profile_out --overwrite "$@" 2>&1 |
        sed -n '/^profile:/,/^  step/p;/^error/p'
}
run "LoRA r=16, stage 0" --lora-rank 16 --lora-alpha 32
run "LoRA r=16, stage 3" --lora-rank 16 --lora-alpha 32 --zero-stage 3
run "LoRA r=16, stage 3 + offload" --lora-rank 16 --lora-alpha 32 --zero-stage 3 --offload
run "full fine-tuning, stage 0" --lora-rank 0 --lr 1e-5
