#!/usr/bin/env bash
# Every GPU figure of onebit in one run, meant to finish in under 8 minutes on one H100/H200:
#   1. benchmarks/train_speed.py: ResNet-20 recu / FP twin / bare PyTorch / official-style step;
#   2. benchmarks/train_speed.py --imagenet: binary vs FP throughput of the ImageNet networks;
#   3. the 40-epoch Fashion-MNIST recipes, recu and its FP twin (compiled, bf16), and their
#      report (final and best top-1, train time).
# Needs a CUDA build of PyTorch and Fashion-MNIST (the Debian package, or the four *-ubyte.gz
# files in data/fashion-mnist/). Each step has its own time limit, so one slow step does not
# cost the others; every log goes to OUT (default runs/gpu_check).
#     bash benchmarks/gpu_check.sh [OUT]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
step() { echo; echo "== $* ($(date +%T))"; }

python3 -c "import onebit" 2>/dev/null ||
    python3 -m pip install --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 ||
    { echo "cannot install onebit here: see $OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())' ||
    exit 1

step "1/3 train_speed: ResNet-20 (recu, fp, bare PyTorch fp, official-style recu)"
timeout 75 python3 benchmarks/train_speed.py --device cuda --steps 200 --warmup 30 --rounds 5 \
    2>&1 | tee "$OUT/train_speed.txt"

step "2/3 train_speed --imagenet: binary vs FP twin at 224x224, batch 256"
timeout 135 python3 benchmarks/train_speed.py --imagenet --device cuda --steps 20 --warmup 5 \
    --rounds 3 2>&1 | tee "$OUT/imagenet.txt"

step "3/3 Fashion-MNIST, 40 epochs: resnet20 recu and fp"
for method in recu fp; do
    timeout 130 python3 -m onebit train "configs/fmnist/resnet20_$method.yaml" \
        --out "$OUT/resnet20_$method" 2>&1 | grep -v "^epoch" | tee "$OUT/train_$method.txt"
done
python3 -m onebit report "$OUT/resnet20_recu" "$OUT/resnet20_fp" 2>&1 | tee "$OUT/report.md"
step "done"
