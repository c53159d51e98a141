"""Deployed-engine speed and size: PyTorch fp32 vs the packed xnor-popcount kernels.

Per-layer table: ResNet-18's binary 3x3 conv shapes (64x56x56, 128x28x28, 256x14x14, 512x7x7)
at batch 1 and 8, PyTorch's fp32 conv against a deployed layer's whole call (binarize + pack
+ conv + scale/bias). Whole-model table: fp32 twin vs the 1w1a model in PyTorch vs its
deployed export, and the fp32 checkpoint size vs the .onebit file. All in one process, with
torch.get_num_threads() threads.

    python benchmarks/kernel_speed.py                       # the CIFAR-scale families
    python benchmarks/kernel_speed.py --models resnet18,birealnet18 --batch 1
    OMP_NUM_THREADS=1 python benchmarks/kernel_speed.py --no-layers

Same options and output as `onebit bench` (see `onebit bench --help`).
"""

import sys

from onebit.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
