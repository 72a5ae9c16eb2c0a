"""Accuracy statistics."""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch

Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def mean_confidence_interval(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and 95% confidence half-width ``1.96 * s / sqrt(n)`` of per-episode accuracies
    (``s``: sample standard deviation, ddof = 1; the normal approximation used across the
    few-shot literature). The half-width is 0 for a single episode."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, Z_95 * math.sqrt(var / n)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Percentage of rows of logits [n, n_way] whose largest entry is at labels [n]."""
    return (logits.argmax(1).to(labels.device) == labels).float().mean().item() * 100
