#!/usr/bin/env bash
# Where an attention backward waits: one launch of one version's kernel under ncu (warp states, the stall
# reasons of every SASS instruction, the tensor pipe's use), at one T of dev/attention's benchmark shapes
# (B*T = 16,384; head_dim 64 with H 32 first, then 128 with H 16: the kernel's first launch is the one timed).
# Every other version is skipped, so the launch is the named version's.
#   make -C dev attention && bash dev/ncu_backward.sh [T] [VERSION] [KERNEL] [OUT]
# VERSION: the start of a version's name in dev/attention's table (default "v1 bwd", the library's); KERNEL:
# a regex of the kernel's name (default flash_backward_ws_kernel: head_dim 128's library backward and dev v10,
# v14, v16; head_dim 64's library backward is flash_backward_ws64x128_kernel). Writes OUT/report.txt (the
# sections), OUT/sass.csv (per instruction) and OUT/report.ncu-rep (default OUT /tmp/ncu_backward).
set -uo pipefail
cd "$(dirname "$0")"
T=${1:-8192}
keep=${2:-v1 bwd}
kernel=${3:-flash_backward_ws_kernel}
out=${4:-/tmp/ncu_backward}
mkdir -p "$out"
ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
skips=()
for p in "v1m" "v1 fwd" "v1 bwd" v2 v3 v4 v5 v6 v7 v8 v9 v10 v11 v12 v13 v14 v15 v16; do
    [[ "$keep" == "$p"* ]] || skips+=(--skip "$p")
done
"$ncu" --clock-control none -k "regex:$kernel" --launch-count 1 --section SpeedOfLight --section WarpStateStats \
    --section SchedulerStats --section SourceCounters --section ComputeWorkloadAnalysis --import-source yes -f \
    -o "$out/report" ./attention --bench-only "$T" "${skips[@]}" > "$out/run.log" 2>&1 || { tail -20 "$out/run.log"; exit 1; }
"$ncu" --import "$out/report.ncu-rep" --print-details all > "$out/report.txt"
"$ncu" --import "$out/report.ncu-rep" --page source --csv --print-source sass > "$out/sass.csv"
grep -E "Duration|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Tensor" "$out/report.txt" | head -20
