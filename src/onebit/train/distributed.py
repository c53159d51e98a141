"""Multi-process training with DistributedDataParallel: one process per GPU (or per CPU worker).

    torchrun --nproc_per_node 8 -m onebit train configs/imagenet/resnet18_irnet_mmcls.yaml

``torchrun`` starts the processes and tells each one its place through the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
:func:`process_group` joins them (NCCL on CUDA, gloo on the CPU). Without a process group every
function here is the identity, so a single-process run is unchanged. With one, the trainer:

- gives each process its contiguous part of every batch (``data.batch_size`` is the batch of
  all processes together, so a recipe means the same on any number of GPUs; see
  :func:`onebit.data.gpu_loader.batch_bounds`);
- wraps the model in DistributedDataParallel (gradients averaged over the processes), after
  converting BatchNorm to SyncBatchNorm when ``runtime.sync_bn`` (CUDA only, as torch's);
- copies process 0's buffers (BatchNorm running statistics) to every process after each
  training epoch, so that every process evaluates, and process 0 saves, the same model;
- sums the metrics over the processes (:func:`reduce_sum`);
- writes files and prints from process 0 only (the others get a ``NullRunDir``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from onebit.errors import ConfigError


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True in the process that writes files and prints (rank 0, or the only process)."""
    return rank_and_world()[0] == 0


@contextmanager
def process_group(device: str = "auto") -> Iterator[int]:
    """Join the process group ``torchrun`` describes in the environment for the duration of
    the block; yields this process's rank. Backend NCCL when the run uses CUDA (each process
    on the GPU of its ``LOCAL_RANK``), gloo on the CPU. Without ``WORLD_SIZE`` > 1 (a plain
    ``onebit train``), or when a group already exists (the caller made one), it does nothing.
    ``device`` is ``runtime.device``: ``auto``, ``cuda`` or ``cpu``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or dist.is_initialized():
        yield rank_and_world()[0]
        return
    if ":" in device:
        raise ConfigError(
            f"config key runtime.device: {device!r} names one device, but under torchrun each "
            "process uses the GPU of its LOCAL_RANK; set runtime.device: auto (or cuda, cpu)"
        )
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        yield dist.get_rank()
    finally:
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel in a multi-process run (its BatchNorm
    layers first converted, in place, to SyncBatchNorm when ``sync_bn``); else ``model``."""
    if rank_and_world()[1] == 1:
        return model
    if sync_bn:
        if device.type != "cuda":
            raise ConfigError(
                "config key runtime.sync_bn: torch's SyncBatchNorm runs on CUDA GPUs only; "
                "set runtime.sync_bn: false on the CPU"
            )
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces the BN children in place
    # A conv with one input channel (Fashion-MNIST) gets its weight gradient with a different
    # stride along that size-1 dimension; the layout is the same, DDP's warning is noise.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def agree(flag: bool) -> bool:
    """Process 0's ``flag`` in every process (``flag`` when alone): what the processes must
    decide as one, such as whether the run directory holds a checkpoint, which process 0
    may have been writing a moment ago."""
    if rank_and_world()[1] == 1:
        return flag
    decision = [flag]
    dist.broadcast_object_list(decision, 0)
    return bool(decision[0])


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all processes (a new tensor); ``tensor`` itself when alone."""
    if rank_and_world()[1] == 1:
        return tensor
    total = tensor.clone()
    dist.all_reduce(total)
    return total


def sync_buffers(model: nn.Module) -> None:
    """Copy process 0's buffers (BatchNorm running statistics, binarizer state) to every
    process. DDP broadcasts them before each forward, but each process then updates its own
    running statistics with its part of the batch."""
    if rank_and_world()[1] == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, 0)
