"""``chain``: EMD on a line (1-D nodes), sliced over random projections of node features.

On a chain (the real line) the optimal plan for any convex ground cost of |x - y| is
the monotone coupling: sort both node sets, then match the cumulative masses,

    plan_sorted[i, j] = max(0, min(A_i, B_j) - max(A_{i-1}, B_{j-1})),

with A, B the cumulative sums of the sorted weights (Martinez et al. 2016, chain-
connected spaces). :func:`chain_emd` gives the closed-form value on the line,
sum over the gaps of the merged sorted coordinates of gap * |F_a - F_b|^rho (rho = 1:
the 1-D Wasserstein distance times the mass; rho = 2: the relaxed EMD^2).

The solver takes node coordinates ``x`` [B, M] and ``y`` [B, N] (a chain), or node
features ``x`` [B, M, D] and ``y`` [B, N, D], projected onto ``n_projections`` random
unit directions drawn from ``seed``: the plan is the average of the monotone plans
(sliced; a feasible plan) and ``value = sum(plan * cost)`` for the given ``cost``
(for 1-D nodes with cost |x_i - y_j| this is the exact EMD; otherwise an upper bound).

Differentiation: d value / d cost = plan; d value / d a, d b by autograd through the
closed-form coupling (piecewise linear in the cumulative masses, exact almost
everywhere); the coordinates fix only the order and get no gradient. In
:func:`chain_emd` the coordinates are differentiable and the gradients for ``a``
and ``b`` are projected to sum to zero (dirt-conserving, as in ``tree``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ._problem import EMDInputError, EMDResult, check_masses, check_points
from ._solver import Option, SolverSpec
from ._tree import _ZeroSum


def monotone_plan(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Optimal 1-D plan [B, M, N] of nodes at x [B, M] (weights a [B, M]) and y [B, N] (b [B, N])."""
    xi = x.argsort(-1)
    yi = y.argsort(-1)
    A = a.gather(-1, xi).cumsum(-1)
    Bc = b.gather(-1, yi).cumsum(-1)
    A = A * (Bc[:, -1:] / A[:, -1:])                 # equal masses to rounding
    A0 = torch.cat([torch.zeros_like(A[:, :1]), A[:, :-1]], -1)
    B0 = torch.cat([torch.zeros_like(Bc[:, :1]), Bc[:, :-1]], -1)
    sorted_plan = (torch.minimum(A[:, :, None], Bc[:, None, :])
                   - torch.maximum(A0[:, :, None], B0[:, None, :])).clamp_min(0)
    plan = torch.empty_like(sorted_plan)
    rows = xi[:, :, None].expand_as(sorted_plan)
    plan.scatter_(1, rows, sorted_plan)                # undo the row sort
    out = torch.empty_like(plan)
    out.scatter_(2, yi[:, None, :].expand_as(plan), plan)  # undo the column sort
    return out


def chain_emd(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
              rho: float = 1.0) -> torch.Tensor:
    """Closed-form EMD^rho [B] on the line between nodes x [B, M] (a [B, M]) and y [B, N] (b [B, N]).

    sum over consecutive merged coordinates z_k < z_{k+1} of (z_{k+1} - z_k) |D_k|^rho with
    D_k the mass of ``a`` minus the mass of ``b`` at or left of z_k; rho = 1 is the
    1-D EMD, rho = 2 the relaxed EMD^2 with the dirt-conserving gradient.

    Checked as :func:`fewshot.emd.solve` checks its problems (EMDInputError): finite
    coordinates, finite non-negative weights, every row with mass, equal masses per row.
    """
    if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho >= 1):
        raise EMDInputError(f"chain_emd: rho must be a number >= 1, got {rho!r}")
    for name, t in (("x", x), ("y", y), ("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise EMDInputError(f"chain_emd: {name} must be a tensor [B, {'M' if name in 'xa' else 'N'}] "
                                f"(one coordinate or weight per node), got {got}")
    if x.shape != a.shape or y.shape != b.shape or x.shape[0] != y.shape[0]:
        raise EMDInputError(f"chain_emd: expected x, a [B, M] and y, b [B, N]; got x {tuple(x.shape)}, "
                            f"a {tuple(a.shape)}, y {tuple(y.shape)}, b {tuple(b.shape)}")
    check_points(x, y, where="chain_emd: ")          # also: no node (an empty x or y)
    for name, t in (("a", a), ("b", b)):
        if not t.is_floating_point():
            raise EMDInputError(f"chain_emd: {name} must be a floating-point tensor, got {t.dtype}")
    check_masses(a, b.to(a.dtype), where="chain_emd: ")
    z = torch.cat([x, y], -1)
    mass = torch.cat([_ZeroSum.apply(a), -_ZeroSum.apply(b)], -1)
    z, order = z.sort(-1)
    D = mass.gather(-1, order).cumsum(-1)[:, :-1]
    return ((z[:, 1:] - z[:, :-1]) * D.abs().pow(rho)).sum(-1)


def _directions(dim: int, n: int, seed: int, like: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(dim, n, generator=g, dtype=torch.float64)
    return (d / d.norm(dim=0, keepdim=True)).to(device=like.device, dtype=like.dtype)


def solve_chain(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                x: Optional[torch.Tensor] = None, y: Optional[torch.Tensor] = None,
                n_projections: int = 16, seed: int = 0) -> EMDResult:
    """Chain / sliced EMD of cost [B, M, N], a [B, M], b [B, N] with node coordinates
    x [B, M] and y [B, N] or features x [B, M, D] and y [B, N, D]; see the module docstring."""
    B, M, N = cost.shape
    if x is None or y is None:
        raise EMDInputError("the chain solver needs node coordinates: pass x [B, M] and y [B, N] "
                            "or features x [B, M, D] and y [B, N, D]")
    if x.dim() != y.dim() or x.shape[:2] != (B, M) or y.shape[:2] != (B, N) or x.dim() not in (2, 3) \
            or (x.dim() == 3 and x.shape[2] != y.shape[2]):
        raise EMDInputError(f"chain: x must be [B, M] or [B, M, D] and y [B, N] or [B, N, D] with "
                            f"B, M, N = {B}, {M}, {N}; got x {tuple(x.shape)} and y {tuple(y.shape)}")
    x, y = x.detach(), y.detach()
    if x.dim() == 2:
        plan = monotone_plan(x, y, a, b)
        n_projections = 1
    else:
        d = _directions(x.shape[2], n_projections, seed, x)
        px = (x @ d).permute(2, 0, 1).reshape(n_projections * B, M)
        py = (y @ d).permute(2, 0, 1).reshape(n_projections * B, N)
        plan = monotone_plan(px, py, a.repeat(n_projections, 1), b.repeat(n_projections, 1))
        plan = plan.reshape(n_projections, B, M, N).mean(0)
    value = (plan * cost).sum((1, 2))
    return EMDResult(plan=plan.detach(), value=value, solver="chain",
                     info={"n_projections": n_projections})


SPEC = SolverSpec(
    solve_chain,
    {"n_projections": Option(16, int, low=1), "seed": Option(0, int, low=0)},
    differentiation="d value / d cost = plan; a and b by autograd through the closed-form "
                    "monotone coupling; the coordinates get no gradient",
    needs_points=True)
