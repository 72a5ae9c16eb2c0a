"""Schedules of a training stage: the optimiser, the per-step learning rate (step or cosine
decay with a linear warm-up) and the progressive-resizing image sizes."""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch


def sgd(params: Iterable, lr: float, momentum: float, nesterov: bool, weight_decay: float):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                           weight_decay=weight_decay)


def lr_factor(step: int, steps_per_epoch: int, epochs: int, schedule: str, step_size: int,
              gamma: float, warmup_epochs: float) -> float:
    """Learning-rate multiplier before optimisation step ``step`` (0-based).

    ``step``: gamma ** (epoch // step_size), constant within an epoch; ``cosine``:
    0.5 * (1 + cos(pi * t)) with t the fraction of all steps done, decaying to 0 at the
    end. Both are multiplied by a linear warm-up over the first ``warmup_epochs``."""
    if schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * step / max(1, epochs * steps_per_epoch)))
    else:
        factor = gamma ** ((step // steps_per_epoch) // step_size)
    warm = warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        factor *= (step + 1) / warm
    return factor


def scheduler(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int):
    """The per-step schedule of a stage config (pretrain or meta), as a LambdaLR."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, steps_per_epoch, cfg.epochs, cfg.schedule, cfg.step_size, cfg.gamma, cfg.warmup_epochs))


def size_at(sizes, epoch: int) -> Optional[int]:
    """Training image size of ``epoch`` under a checked size schedule (None: data.image_size)."""
    current = None
    for first, size in sizes:
        if epoch >= first:
            current = size
    return current
