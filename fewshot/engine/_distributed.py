"""Multi-process training with torch's DistributedDataParallel, launched by ``torchrun``.

``torchrun --nproc_per_node G train.py ...`` sets WORLD_SIZE, RANK and LOCAL_RANK;
each process then drives one GPU (``cuda:LOCAL_RANK``; gloo on CPU for tests). A plain
``python train.py`` is a world of one and nothing here changes its behaviour.
"""
from __future__ import annotations

import os
from typing import Tuple

import torch
import torch.distributed as dist
import torch.nn as nn


def world() -> Tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside ``torchrun``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun; returns this process's device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` inside DistributedDataParallel when the world has several processes."""
    if world()[1] == 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)
