#!/usr/bin/env bash
# Every GPU figure of onebit in one run, under 8 minutes on one H100/H200, install included;
# needs no network. Prepare the bundle here first (make gpu-bundle), then on the GPU machine:
#     bash benchmarks/gpu_check.sh [OUT]        (the device tool: carry [".gpu"])
#   0. onebit from the bundle .gpu (scripts/gpu-install.sh) unless it imports already;
#   1. benchmarks/train_speed.py: ResNet-20 recu / FP twin / bare PyTorch / official-style step;
#   2. benchmarks/train_speed.py --imagenet: binary vs FP throughput of the ImageNet networks;
#   3. the 40-epoch Fashion-MNIST recipes (compiled, bf16) side by side on the one GPU: recu,
#      its FP twin, and recu picking its best epoch on 5,000 held-out training images
#      (data.val_split, eval.select_on: val); then their report (final and best top-1, time).
# Fashion-MNIST: the bundle's .gpu/fashion-mnist, else where onebit looks (data/fashion-mnist,
# the Debian package). Writes five files to OUT ($1, else the device tool's $OUT, else
# runs/gpu_check): gpu_check.log (all of the output), train_speed.txt, imagenet.txt, report.md,
# fmnist_runs.tar.gz (the three run directories, weights left out; they stay in
# runs/gpu_check_runs). Time limits: install 60 s, step 1 75 s, step 2 120 s, step 3 what is
# left of BUDGET_S (465 s from the start) less 15 s for the report and the archive: about
# 185 s when the steps before it use all of theirs, more when they finish sooner.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-runs/gpu_check}}
BUNDLE=.gpu
RUNS=runs/gpu_check_runs
BUDGET_S=465
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
step() { echo; echo "== $* ($(date +%T), ${SECONDS} s)"; }

fmnist() {  # NAME CONFIG [--set KEY=VALUE ...]: one 40-epoch run, its console in RUNS/NAME.txt
    local name=$1 config=$2
    shift 2
    timeout "$LIMIT_S" python3 -m onebit train "$config" "${DATA[@]}" "$@" --out "$RUNS/$name" \
        >"$RUNS/$name.txt" 2>&1
    echo "$name (exit $?): $(tail -n 1 "$RUNS/$name.txt")"
}

main() {
    step "0/3 install onebit"
    if python3 -c "import onebit" 2>/dev/null; then
        echo "onebit imports already: not installed again"
    else
        timeout 60 bash scripts/gpu-install.sh "$BUNDLE" || { echo "install failed"; return 1; }
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c 'import torch, onebit; print("torch", torch.__version__, torch.cuda.get_device_name())' ||
        return 1

    step "1/3 train_speed: ResNet-20 (recu, fp, bare PyTorch fp, official-style recu)"
    timeout 75 python3 benchmarks/train_speed.py --device cuda --steps 200 --warmup 30 --rounds 5 \
        2>&1 | tee "$OUT/train_speed.txt"

    step "2/3 train_speed --imagenet: binary vs FP twin at 224x224, batch 256"
    timeout 120 python3 benchmarks/train_speed.py --imagenet --device cuda --steps 20 --warmup 5 \
        --rounds 3 2>&1 | tee "$OUT/imagenet.txt"

    LIMIT_S=$((BUDGET_S - 15 - SECONDS))
    step "3/3 Fashion-MNIST, 40 epochs, three runs at once, ${LIMIT_S} s at most"
    DATA=()
    [ -d "$BUNDLE/fashion-mnist" ] && DATA=(--set "data.root=$BUNDLE/fashion-mnist")
    rm -rf "$RUNS"
    mkdir -p "$RUNS"
    fmnist resnet20_recu configs/fmnist/resnet20_recu.yaml &
    fmnist resnet20_fp configs/fmnist/resnet20_fp.yaml &
    fmnist resnet20_recu_val configs/fmnist/resnet20_recu.yaml \
        --set data.val_split=5000 --set eval.select_on=val &
    wait
    python3 -m onebit report "$RUNS"/resnet20_{recu,fp,recu_val} 2>&1 | tee "$OUT/report.md"
    tar -czf "$OUT/fmnist_runs.tar.gz" --exclude='*.safetensors' --exclude=.lock \
        --exclude=.inductor-cache -C "$RUNS" .
    step "done"
}

main 2>&1 | tee "$OUT/gpu_check.log"
