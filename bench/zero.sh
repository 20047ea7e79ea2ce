#!/usr/bin/env bash
# The ZeRO scaling table in one command: for 1, 2, 4 (and 8) GPUs, our stages 0-3 (+ CPU offload), LoRA
# and full fine-tuning, tokens/s per GPU and peak GiB per rank, beside PyTorch FSDP2 + PEFT on the same
# GPUs. Llama-3.2-1B shape, seq 1024, micro-batch 8 per GPU.
#   make && bash bench/zero.sh [steps] [GPU counts...]
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0  # ./train sets it itself; the FSDP2 peer needs it here
steps=${1:-20}; shift || true
counts=${*:-"1 2 4"}
run() {  # run GPUS LABEL FLAGS...
    local n=$1 label=$2; shift 2
    mpirun --allow-run-as-root --bind-to none -np "$n" ./train --preset llama-3.2-1b --data data/corpus --seq 1024 --micro-batch 8 \
        --steps "$steps" --log-every 10 --sample 0 --out /tmp/zero_bench --overwrite "$@" 2>&1 | grep -E "^step|^error" | tail -1 | sed "s/^/ours $n GPUs $label: /"
}
for n in $counts; do
    for stage in 0 1 2 3; do
        run "$n" "LoRA stage $stage" --lora-rank 16 --lora-alpha 32 --zero-stage $stage
        run "$n" "full stage $stage" --lora-rank 0 --lr 1e-5 --zero-stage $stage
    done
    run "$n" "LoRA stage 3 + offload" --lora-rank 16 --lora-alpha 32 --zero-stage 3 --offload
    run "$n" "full stage 3 + offload" --lora-rank 0 --lr 1e-5 --zero-stage 3 --offload
    torchrun --nproc_per_node "$n" bench/fsdp_peer.py "$steps" lora 2>&1 | grep peer
    torchrun --nproc_per_node "$n" bench/fsdp_peer.py "$steps" full 2>&1 | grep peer
done
