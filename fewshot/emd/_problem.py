"""The batched EMD problem, its result type and input checks."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from ..errors import FewShotError


class EMDInputError(FewShotError, ValueError):
    """An argument of :func:`fewshot.emd.solve` has the wrong shape, dtype, device or values."""


class EMDSolverError(FewShotError, RuntimeError):
    """A solver failed to produce a usable answer (non-finite, or far from feasible)."""


@dataclass
class EMDResult:
    """Solution of a batch of transport problems.

    plan: [B, M, N] transport plan (rows sum to ``a``, columns to ``b``); None where the
        solver was asked not to return it (``return_plan: false``).
    value: [B] transport cost ``sum(plan * cost)`` (for regularised solvers: the
        transport part of the objective, without the regulariser).
    potentials: (f [B, M], g [B, N]) dual potentials where the solver has them, else None.
    solver: name of the solver that produced the result.
    info: solver-specific diagnostics (iterations, marginal error, ...).
    problem: (cost [B, M, N], a [B, M], b [B, N]), the problem solved, as passed to the
        solver (set by :class:`fewshot.emd.Solver`; None from a solver function called alone).
    """
    plan: Optional[torch.Tensor]
    value: torch.Tensor
    potentials: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    solver: str = ""
    info: Dict[str, Any] = field(default_factory=dict)
    problem: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None


def _distinct(t: torch.Tensor) -> torch.Tensor:
    """The values of ``t`` once each: a tensor expanded along a dimension (stride 0, e.g. one
    cost matrix broadcast over the batch) is read along that dimension once."""
    for dim, (size, stride) in enumerate(zip(t.shape, t.stride())):
        if stride == 0 and size > 1:
            t = t.narrow(dim, 0, 1)
    return t


def check_problem(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """Validate ``cost`` [B, M, N], ``a`` [B, M], ``b`` [B, N]; raise EMDInputError naming the argument."""
    for name, t in (("cost", cost), ("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise EMDInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise EMDInputError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if cost.dim() != 3:
        raise EMDInputError(f"cost must have shape [B, M, N], got {tuple(cost.shape)}")
    B, M, N = cost.shape
    if tuple(a.shape) != (B, M):
        raise EMDInputError(f"a must have shape [B, M] = [{B}, {M}] to match cost {tuple(cost.shape)}, "
                            f"got {tuple(a.shape)}")
    if tuple(b.shape) != (B, N):
        raise EMDInputError(f"b must have shape [B, N] = [{B}, {N}] to match cost {tuple(cost.shape)}, "
                            f"got {tuple(b.shape)}")
    for name, t in (("a", a), ("b", b)):
        if t.dtype != cost.dtype:
            raise EMDInputError(f"{name} has dtype {t.dtype} but cost has {cost.dtype}; use one dtype")
        if t.device != cost.device:
            raise EMDInputError(f"{name} is on {t.device} but cost is on {cost.device}; use one device")
    if B == 0 or M == 0 or N == 0:
        raise EMDInputError(f"cost {tuple(cost.shape)} holds no problem")
    check_masses(a, b, cost=cost)


def check_points(x: torch.Tensor, y: torch.Tensor, where: str = "") -> None:
    """Node coordinates x, y: floating-point tensors without NaN or infinite values."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise EMDInputError(f"{where}{name} must be a floating-point tensor of node coordinates")
        if t.numel() == 0:
            raise EMDInputError(f"{where}{name} {tuple(t.shape)} holds no node")
        if not bool(torch.isfinite(t.detach()).all()):
            raise EMDInputError(f"{where}{name} contains NaN or infinite coordinates")


def check_masses(a: torch.Tensor, b: torch.Tensor, cost: Optional[torch.Tensor] = None, where: str = "") -> None:
    """Weights a [B, M], b [B, N] (and ``cost``, if given): finite, non-negative, every row with
    mass, equal total mass per problem; EMDInputError naming the argument (after ``where``)."""
    with torch.no_grad():
        low = {}
        for name, t in (("cost", cost), ("a", a), ("b", b)):
            if t is None:
                continue
            low[name], high = (float(v) for v in torch.aminmax(_distinct(t)))   # NaN propagates to both
            if not (math.isfinite(low[name]) and math.isfinite(high)):
                raise EMDInputError(f"{where}{name} contains NaN or infinite values")
        sa, sb = a.sum(-1, dtype=torch.float64), b.sum(-1, dtype=torch.float64)   # no half overflow
        limit = torch.finfo(a.dtype).max
        for name, total in (("a", sa), ("b", sb)):
            if float(total.max()) > limit:
                raise EMDInputError(f"{where}{name} has a row whose total mass {float(total.max()):.6g} overflows "
                                    f"{a.dtype} (largest {limit:.6g}); rescale the weights or use float32")
        for name, t, total in (("a", a, sa), ("b", b, sb)):
            if low[name] < 0:
                raise EMDInputError(f"{where}{name} has negative entries; weights must be >= 0")
            if bool((total <= 0).any()):
                raise EMDInputError(f"{where}{name} has a row with zero total mass; every problem needs mass")
        rtol = {torch.float64: 1e-6, torch.float32: 1e-4}.get(a.dtype, 1e-2)     # half types: 1e-2
        if bool(((sa - sb).abs() > rtol * torch.maximum(sa, sb)).any()):
            worst = int(((sa - sb).abs() / torch.maximum(sa, sb)).argmax())
            raise EMDInputError(f"{where}a and b must have equal total mass per problem; problem {worst} has "
                                f"sum(a) = {float(sa[worst]):.8g}, sum(b) = {float(sb[worst]):.8g}")
