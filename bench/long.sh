#!/usr/bin/env bash
# Long context and short rows, in one command, ours beside the HF peers (Llama-3.2-1B shape, random init,
# LoRA r=16 alpha=32 on all seven projections, AdamW, one GPU):
#   attention alone      dev/attention (ours, fused) and bench/sdpa_peer.py (PyTorch SDPA), fwd+bwd TFLOP/s
#   whole steps          seq 8192 and 16384, micro-batch 1: ours (packed corpus) and HF + PEFT eager/compile
#   the QA set           real (non-pad) tokens/s: ours packed into 1024-token sequences, HF + PEFT with
#                        dynamic padding (HF Trainer's collator) at batch 16 and 64
#   make && bash bench/long.sh [steps] [attention|long|qa|all]
set -uo pipefail
cd "$(dirname "$0")/.."
steps=${1:-20}
window=$(( steps >= 4 ? steps / 2 : steps ))  # the last progress line: the second half of the steps (steady state)
part=${2:-all}
nvidia-smi --query-gpu=name --format=csv,noheader
ours() {  # ours LABEL FLAGS...: the last progress line
    local label=$1; shift
    ./train --preset llama-3.2-1b --lora-rank 16 --lora-alpha 32 --steps "$steps" --log-every "$window" --sample 0 --out /tmp/bench_long --overwrite "$@" 2>&1 |
        grep -E "^step|^error" | tail -1 | sed "s/^/ours $label: /"
}
if [ "$part" = attention ] || [ "$part" = all ]; then
make -C dev -s && ./dev/attention 2>&1 | tail -16
python3 bench/sdpa_peer.py
fi
if [ "$part" = long ] || [ "$part" = all ]; then
# long rows as the peers see them: one document of random ids per row, so attention is causal over all of it
python3 -c "
import json, random
r = random.Random(0)
with open('/tmp/long_rows.jsonl', 'w') as f:
    for _ in range(32): f.write(json.dumps({'input_ids': [r.randrange(128000) for _ in range(16384)]}) + '\\n')"
ours "seq 8192, micro-batch 1 " --data /tmp/long_rows.jsonl --seq 8192 --micro-batch 1
ours "seq 16384, micro-batch 1" --data /tmp/long_rows.jsonl --seq 16384 --micro-batch 1
python3 bench/hf_peer.py eager 10 1 8192 2>&1 | grep peer
python3 bench/hf_peer.py compile 10 1 8192 2>&1 | grep peer
fi
if [ "$part" = qa ] || [ "$part" = all ]; then
ours "QA set, seq 1024 mb 8    " --data data/qa_train.jsonl --eval-data data/qa_eval.jsonl --seq 1024 --micro-batch 8
python3 bench/hf_qa_peer.py 16 30 2>&1 | grep peer
python3 bench/hf_qa_peer.py 64 20 2>&1 | grep peer
fi
