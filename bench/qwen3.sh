#!/usr/bin/env bash
# Qwen3-0.6B's shape on one GPU, in one command: ours (LoRA at ZeRO stage 0, the recipe's ZeRO-2 + CPU
# optimizer offload, full fine-tuning) beside the HF + PEFT peers (eager and torch.compile, Qwen3ForCausalLM
# of the same shape) at seq 1024 (micro-batch 8) and seq 4096 (micro-batch 2): random init, LoRA r=16
# alpha=32 on all seven projections, AdamW. Every side trains on the same kind of rows: one document of
# random ids per row, so attention is causal over all of it (no tokenizer involved).
#   make && bash bench/qwen3.sh [steps]
set -uo pipefail
cd "$(dirname "$0")/.."
steps=${1:-20}
window=$(( steps >= 4 ? steps / 2 : steps ))  # the last progress line: the second half of the steps (steady state)
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "
import json, random
r = random.Random(0)
with open('/tmp/qwen3_rows.jsonl', 'w') as f:
    for _ in range(64): f.write(json.dumps({'input_ids': [r.randrange(151643) for _ in range(4096)]}) + '\\n')"
ours() {  # ours LABEL FLAGS...: the last progress line's tokens/s, TFLOP/s and memory
    local label=$1; shift
    ./train --preset qwen3-0.6b --data /tmp/qwen3_rows.jsonl --steps "$steps" --log-every "$window" --sample 0 --out /tmp/bench_qwen3 --overwrite "$@" 2>&1 |
        grep -E "^step|^error" | tail -1 | sed "s/^/ours $label: /"
}
for shape in "1024 8" "4096 2"; do
    set -- $shape
    seq=$1 mb=$2
    ours "seq $seq mb $mb, LoRA, stage 0          " --seq "$seq" --micro-batch "$mb" --lora-rank 16 --lora-alpha 32
    ours "seq $seq mb $mb, LoRA, stage 2 + offload" --seq "$seq" --micro-batch "$mb" --lora-rank 16 --lora-alpha 32 --zero-stage 2 --offload
    ours "seq $seq mb $mb, full, stage 0          " --seq "$seq" --micro-batch "$mb" --lora-rank 0 --lr 1e-5
    python3 bench/hf_peer.py eager 20 "$mb" "$seq" qwen3-0.6b 2>&1 | grep peer
    python3 bench/hf_peer.py compile 20 "$mb" "$seq" qwen3-0.6b 2>&1 | grep peer
done
