#!/usr/bin/env bash
# The side-by-side benchmark on one GPU, in one command: ours (LoRA at ZeRO stages 0 and 3 (stage 0 in both
# LoRA layouts, --lora-layout plain and folded), stage 3
# gathering into buffers as N ranks do (--copy-gathers), stage 3 with CPU optimizer offload, and full
# fine-tuning) beside the HF + PEFT peers (eager and torch.compile) on the Llama-3.2-1B shape, random init,
# LoRA r=16 alpha=32 on all seven projections, seq 1024, micro-batch 8, AdamW. Ours trains on data/corpus
# packed into 1024-token rows.
#   make && bash bench/run.sh [steps]
set -uo pipefail
cd "$(dirname "$0")/.."
steps=${1:-30}
nvidia-smi --query-gpu=name --format=csv,noheader
ours() {  # ours LABEL FLAGS...: the last progress line's tokens/s, TFLOP/s and memory
    local label=$1; shift
    ./train --preset llama-3.2-1b --data data/corpus --eval-data data/qa_eval.jsonl --seq 1024 --micro-batch 8 --steps "$steps" \
        --log-every 10 --sample 0 --out /tmp/bench_out --overwrite "$@" 2>&1 | grep -E "^step|^error" | tail -1 | sed "s/^/ours $label: /"
}
ours "LoRA, stage 0             " --lora-rank 16 --lora-alpha 32
ours "LoRA, stage 0, folded     " --lora-rank 16 --lora-alpha 32 --lora-layout folded
ours "LoRA, stage 3             " --lora-rank 16 --lora-alpha 32 --zero-stage 3
ours "LoRA, stage 3, copies     " --lora-rank 16 --lora-alpha 32 --zero-stage 3 --copy-gathers
ours "LoRA, stage 3 + offload   " --lora-rank 16 --lora-alpha 32 --zero-stage 3 --offload
ours "LoRA, activation ckpt     " --lora-rank 16 --lora-alpha 32 --checkpoint-activations
ours "full, stage 0             " --lora-rank 0 --lr 1e-5
python3 bench/hf_peer.py eager 20 2>&1 | grep peer
python3 bench/hf_peer.py compile 20 2>&1 | grep peer
