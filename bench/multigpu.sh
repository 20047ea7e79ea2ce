#!/usr/bin/env bash
# What the NCCL path needs checked on a machine with several GPUs, in one command:
#   1. the multi-rank tests (test_multirank.cpp) with one GPU per rank where there are enough: NCCL
#   2. bitwise: on 2 GPUs, ZeRO stage 3 (Llama-3.2-1B's shape with LoRA, and `tiny` fully fine-tuned), the
#      same losses, gradient norms and checkpoint bytes from the default run; overlap_comm false with
#      prefetch off; a repeat; NCCL slowed (NCCL_MAX_NCHANNELS=1 NCCL_PROTO=Simple). Two ranks, because a sum
#      of two is the same in any order: NCCL's choice of rings and channels cannot change the bits, so any
#      difference is a race in the stream/event protocol
#   3. CPU offload with rank 0 confined to one core (taskset -c 0; it gets the warning) against unbound
#      ranks, and against the GPU optimizer: bitwise
#   4. each rank's GPU memory from nvidia-smi beside what the rank reports (memory_rankR.csv, which counts
#      NCCL's buffers measured across the first step)
#   5. the scaling table beside FSDP2 + PEFT (bench/zero.sh) on 1, 2, 4, ... of the GPUs
#   make && bash bench/multigpu.sh [steps]
# Ends with one line per check (PASS or FAIL) and exit status 1 when any failed. With fewer than 2 GPUs
# visible it refuses with one line.
set -uo pipefail
cd "$(dirname "$0")/.."

visible_gpus() {  # CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists
    if [ -n "${CUDA_VISIBLE_DEVICES+x}" ]; then
        echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .
    else
        nvidia-smi -L 2>/dev/null | grep -c '^GPU'
    fi
}
gpus=$(visible_gpus)
if [ "${gpus:-0}" -lt 2 ]; then
    echo "bench/multigpu.sh: needs 2 or more GPUs, ${gpus:-0} visible (nvidia-smi -L, CUDA_VISIBLE_DEVICES)"
    exit 1
fi
if [ ! -x ./train ] || [ ! -x ./build/run_tests ]; then
    echo "bench/multigpu.sh: build first: make && make build/run_tests"
    exit 1
fi
steps=${1:-20}
work=${TMPDIR:-/tmp}/multigpu.$$
mkdir -p "$work"
results=()
result() { results+=("$1: $2"); echo "== $1: $2"; }
mpi="mpirun --allow-run-as-root --bind-to none"
echo "== $gpus GPUs: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); work in $work"

# ---------------------------------------------------------------------------------------------- 1. tests
./build/run_tests -sf='*test_multirank.cpp' 2>&1 | tail -40
[ "${PIPESTATUS[0]}" -eq 0 ] && result "multi-rank tests" PASS || result "multi-rank tests" FAIL

# ---------------------------------------------------------------------------------------------- 2. bitwise
# same RUN_A RUN_B: the losses, gradient norms and eval losses of train_log.csv, and every checkpoint file
same() {
    local a=$1 b=$2
    cmp -s <(cut -d, -f1,3,5,11 "$a/train_log.csv") <(cut -d, -f1,3,5,11 "$b/train_log.csv") || { echo "train logs differ: $a $b"; return 1; }
    local f
    for f in "$a"/checkpoints/step-*/rank-*.safetensors; do
        cmp -s "$f" "$b/${f#$a/}" || { echo "checkpoints differ: $f"; return 1; }
    done
    ls "$a"/checkpoints/step-*/rank-*.safetensors > /dev/null 2>&1 || { echo "no checkpoint in $a"; return 1; }
}
no_overlap="$work/no_overlap.json"
echo '{"zero_optimization": {"stage": 3, "overlap_comm": false, "stage3_prefetch_bucket_size": 0}}' > "$no_overlap"
bitwise() {  # bitwise LABEL TRAIN_ARGS...
    local label=$1; shift
    local args="$* --zero-stage 3 --steps $steps --save-every $steps --log-every 1 --sample 0 --check-collectives --overwrite"
    local d="$work/$label"
    $mpi -np 2 ./train $args --out "$d/default" > "$d.default.log" 2>&1 || { result "bitwise $label" "FAIL (the default run failed: $d.default.log)"; return; }
    $mpi -np 2 ./train $args --config "$no_overlap" --out "$d/no_overlap" > "$d.no_overlap.log" 2>&1
    $mpi -np 2 ./train $args --out "$d/repeat" > "$d.repeat.log" 2>&1
    $mpi -np 2 -x NCCL_MAX_NCHANNELS=1 -x NCCL_PROTO=Simple ./train $args --out "$d/slow_nccl" > "$d.slow_nccl.log" 2>&1
    grep -h "collectives:" "$d.default.log" | head -1
    local v ok=PASS
    for v in no_overlap repeat slow_nccl; do
        if same "$d/default" "$d/$v"; then echo "   $label, $v: bitwise equal"; else ok=FAIL; echo "   $label, $v: DIFFERS (see $d.$v.log)"; fi
    done
    result "bitwise $label (overlap_comm false + no prefetch, repeat, slow NCCL)" $ok
}
mkdir -p "$work/lora_1b" "$work/full_tiny"
bitwise lora_1b --preset llama-3.2-1b --lora-rank 16 --lora-alpha 32 --data data/corpus --seq 1024 --micro-batch 4
bitwise full_tiny --preset tiny --lora-rank 0 --lr 2e-4 --data data/qa_train.jsonl --seq 256 --micro-batch 8

# ---------------------------------------------------------------------------------------------- 3. offload
off="--preset tiny --lora-rank 0 --lr 2e-4 --data data/qa_train.jsonl --seq 256 --micro-batch 8 --zero-stage 3 --offload --steps $steps \
     --save-every $steps --log-every 1 --sample 0 --check-collectives --overwrite"
$mpi -np 2 ./train $off --out "$work/offload/free" > "$work/offload_free.log" 2>&1
$mpi -np 1 taskset -c 0 ./train $off --out "$work/offload/confined" : -np 1 ./train $off --out "$work/offload/confined" \
    > "$work/offload_confined.log" 2>&1
grep -h "AdamW on\|^warning" "$work/offload_confined.log" | sed 's/^/   confined: /' | cut -c1-220
ok=PASS
same "$work/offload/free" "$work/offload/confined" || ok=FAIL
grep -q "^warning: rank 0 may use only 1 CPU" "$work/offload_confined.log" || { echo "   no warning for the confined rank"; ok=FAIL; }
result "offload, rank 0 on one core: bitwise, one warning" $ok
same "$work/offload/free" "$work/full_tiny/default" && result "offload vs the GPU optimizer: bitwise" PASS || result "offload vs the GPU optimizer: bitwise" FAIL

# ---------------------------------------------------------------------------------------------- 4. memory
# Each rank on its own GPU: nvidia-smi's per-process figure, sampled while training, beside the rank's own
# (memory_rankR.csv: tracked allocations + context + NCCL and library buffers).
n=$gpus
mem="$work/memory"
$mpi -np "$n" ./train --preset llama-3.2-1b --lora-rank 16 --data data/corpus --seq 1024 --micro-batch 4 --zero-stage 3 --steps 200 \
    --log-every 5 --sample 0 --overwrite --out "$mem" > "$work/memory.log" 2>&1 &
launcher=$!
for _ in $(seq 600); do [ "$(wc -l < "$mem/train_log.csv" 2>/dev/null || echo 0)" -ge 4 ] && break; sleep 0.5; done
declare -A uuid_index smi
while IFS=', ' read -r index uuid; do uuid_index[$uuid]=$index; done < <(nvidia-smi --query-gpu=index,uuid --format=csv,noheader)
while IFS=", " read -r _pid uuid used; do smi[${uuid_index[$uuid]}]=$used; done \
    < <(nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv,noheader,nounits)
sleep 2
ours=()
for ((r = 0; r < n; ++r)); do ours[$r]=$(tail -1 "$mem/memory_rank$r.csv" 2>/dev/null | cut -d, -f3); done
wait $launcher
grep -h "after the first step" "$work/memory.log" | cut -c1-220
echo "   rank  GPU  nvidia-smi GiB  this rank's report GiB"
ok=PASS
for ((r = 0; r < n; ++r)); do
    s=$(awk -v m="${smi[$r]:-0}" 'BEGIN { printf "%.2f", m / 1024 }')
    printf "   %4d  %3d  %14s  %22s\n" "$r" "$r" "$s" "${ours[$r]:-?}"
    awk -v a="$s" -v b="${ours[$r]:-0}" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 0.05 * a + 0.1) }' || ok=FAIL
done
result "per-rank memory: the report within 5% (+0.1 GiB) of nvidia-smi" $ok

# ---------------------------------------------------------------------------------------------- 5. scaling
counts=""
for c in 1 2 4 8 16; do [ "$c" -le "$gpus" ] && counts="$counts $c"; done
bash bench/zero.sh "$steps" $counts

echo "== summary"
printf '%s\n' "${results[@]}"
for r in "${results[@]}"; do [[ $r == *FAIL* ]] && exit 1; done
exit 0
