"""``exact``: the linear-programming optimum by the network simplex.

Engines (``engine`` option, same optimum and gradients): ``"simplex"`` is the batched
transportation simplex of :mod:`fewshot.emd._simplex`, compiled with numba and parallel over
the problems of a batch on all cores (``NUMBA_NUM_THREADS``), made for many small problems
(DeepEMD's 25 x 25) and warm starts; ``"pot"`` calls POT's C++ network simplex once per
problem, faster on one large problem (below); ``"assignment"`` solves problems with
M == N and equal weights within a and within b (two clouds of N points, uniform weights) as
assignment problems by scipy's ``linear_sum_assignment``, with duals recovered by a
shortest-path search (:mod:`fewshot.emd._assignment`); ``"auto"`` (default) takes the simplex
up to ``AUTO_POT_ABOVE`` cost entries per problem (128 x 128) or with a warm start, POT above.
On real point clouds (``benchmarks/learned_emd_pointclouds.py``: ModelNet40, uniform weights,
one pair, 2 cores) the crossover depends on the CPU: on an Intel Xeon with AVX-512, POT is
ahead from 128 points (128: POT 1.7 ms, simplex 2.0; 256: 4.1 vs 6.5; 1,024: 72 vs 309), on
an AMD EPYC with AVX2 only the simplex was ahead up to 256 points (128: 1.8 vs 2.3; 256: 6.1
vs 6.4; 512: 33 vs 29); the assignment engine is never the fastest, so ``auto`` does not
take it. A problem the compiled engine does not finish within ``max_iter`` pivots is re-solved
by POT. The pivot budget ``max_iter`` defaults to ``max(100_000, M * N)``: a fixed 100,000 stops
POT short of the optimum from about 3,000 points per cloud.

Differentiation (envelope theorem): the value V(cost, a, b) of the LP is
differentiable almost everywhere with dV/dcost = plan, dV/da = f and dV/db = g,
where (f, g) are the dual potentials, each centred to zero mean as in POT (the
shift f + c, g - c is not determined by the LP; along perturbations that keep
sum(a) = sum(b) every choice gives the same derivative). ``result.potentials`` is
a dual optimum itself (mean(f) = 0, value = <f, a> + <g, b>). The plan itself is piecewise
constant in ``cost`` and is returned without gradient; losses should be written
through ``value`` (DeepEMD's logits are: sum(plan * (1 - cost)) = mass - value).
Problems are solved on the CPU in float64 (each problem converted inside the compiled
engine) and the results moved back to the input's device and dtype. Each problem's cost
is divided by its largest magnitude before the simplex runs (the plan of an LP does not
change when its cost is scaled; value and potentials are scaled back), so the optimum is
found for costs of any magnitude.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from ._problem import EMDInputError, EMDResult, EMDSolverError
from ._solver import Option, SolverSpec


def _pot_one(cost, a, b, max_iter, i):
    """Problem i by POT in float64, its cost divided by its largest magnitude and b scaled to
    a's mass (as the compiled engine does); plan, value, f, g in the undivided units."""
    from ot.lp.emd_wrap import emd_c

    cost, a, b = (np.asarray(t, np.float64) for t in (cost, a, b))
    scale = np.abs(cost).max() or 1.0
    plan, value, f, g, code = emd_c(a, b * (a.sum() / b.sum()), np.ascontiguousarray(cost / scale),
                                    max_iter, 1)
    if code != 1:
        raise EMDSolverError(f"exact: POT's network simplex did not reach the optimum of problem {i} "
                             f"(code {code}); raise max_iter")
    return plan, value * scale, f * scale, g * scale


def _network_simplex(cost: np.ndarray, a: np.ndarray, b: np.ndarray, max_iter: int,
                     engine: str = "simplex", basis=None, simplex_max_iter: Optional[int] = None):
    """Solve cost [B, M, N], a [B, M], b [B, N] (float32 or float64); returns plan (in cost's
    dtype), value, f, g (float64), the final bases and the pivots. The compiled simplex
    stops after ``simplex_max_iter`` pivots (default ``max_iter``); POT solves what it left."""
    if engine == "assignment":
        from ._assignment import solve_assignment
        plan, value, f, g = solve_assignment(cost, a, b)
        return plan, value, f, g, None, None
    if engine == "simplex":
        from ._simplex import solve_batch

        pivots_allowed = max_iter if simplex_max_iter is None else simplex_max_iter
        plan, value, f, g, code, pivots, basis = solve_batch(cost, a, b, pivots_allowed, 1e-12, basis)
        unsolved = np.flatnonzero(code != 1)              # re-solved by POT
    else:
        B, M, N = cost.shape
        plan, f, g, value = np.empty((B, M, N), cost.dtype), np.empty((B, M)), np.empty((B, N)), np.empty(B)
        unsolved, pivots = range(B), None
    for i in unsolved:
        plan[i], value[i], f[i], g[i] = _pot_one(cost[i], a[i], b[i], max_iter, i)
    return plan, value, f, g, basis, pivots


ENGINES = ("auto", "simplex", "pot", "assignment")
AUTO_POT_ABOVE = 128 * 128      # cost entries per problem above which engine "auto" takes POT


def pick_engine(engine: str, a: torch.Tensor, b: torch.Tensor, warm_start: bool) -> str:
    """The engine ``auto`` stands for on a [B, M], b [B, N] (see the module docstring); a named
    engine is checked against the problem."""
    M, N = a.shape[1], b.shape[1]
    if engine == "assignment" and not (M == N and bool((a == a[:, :1]).all() and (b == b[:, :1]).all())):
        raise EMDInputError(f"exact: engine 'assignment' needs M == N and equal weights within a and "
                            f"within b (two clouds with uniform weights), got M={M}, N={N}"
                            + ("" if M != N else " with unequal weights"))
    if engine != "auto":
        return engine
    return "simplex" if warm_start or M * N <= AUTO_POT_ABOVE else "pot"


class _ExactEMD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost, a, b, max_iter, engine, basis, out, simplex_max_iter):
        work = cost.dtype if cost.dtype in (torch.float32, torch.float64) else torch.float64
        to_np = lambda t: np.ascontiguousarray(t.detach().to("cpu", work).numpy())  # noqa: E731
        plan, value, f, g, out["basis"], out["pivots"] = _network_simplex(
            to_np(cost), to_np(a), to_np(b), max_iter, engine, basis, simplex_max_iter)
        like = dict(device=cost.device, dtype=cost.dtype)
        plan = torch.from_numpy(plan).to(**like)
        shift = f.mean(-1, keepdims=True)
        f, g = f - shift, g + shift           # a dual optimum with mean(f) = 0
        f = torch.from_numpy(f).to(**like)
        g = torch.from_numpy(g).to(**like)
        value = torch.from_numpy(value).to(**like)
        ctx.save_for_backward(plan, f, g - g.mean(-1, keepdim=True))
        ctx.mark_non_differentiable(plan, f, g)
        return value, plan, f, g

    @staticmethod
    def backward(ctx, grad_value, *_):
        plan, f, g_centred = ctx.saved_tensors
        g = g_centred
        return (grad_value[:, None, None] * plan, grad_value[:, None] * f,
                grad_value[:, None] * g, None, None, None, None, None)


def _check_basis(init, B: int, M: int, N: int, engine: str):
    if engine != "simplex":
        raise EMDInputError(f"exact: a starting basis (init) needs engine 'simplex', not {engine!r}")
    K = M + N - 1
    if not (isinstance(init, (tuple, list)) and len(init) == 2 and all(isinstance(t, torch.Tensor) for t in init)
            and all(tuple(t.shape) == (B, K) and not t.is_floating_point() for t in init)):
        raise EMDInputError(f"exact: init must be a basis (rows [{B}, {K}], columns [{B}, {K}], integer "
                            f"tensors), e.g. a previous result's info['warm_start']")
    return tuple(t.detach().to("cpu", torch.int64).numpy() for t in init)


def solve_exact(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                max_iter: Optional[int] = None, engine: str = "auto",
                init: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                simplex_max_iter: Optional[int] = None) -> EMDResult:
    """Exact EMD of cost [B, M, N], a [B, M], b [B, N]; see the module docstring.

    ``engine``: ``"simplex"`` (compiled, batched, parallel), ``"pot"`` (POT per problem),
    ``"assignment"`` (uniform equal-size problems) or ``"auto"`` (see :func:`pick_engine`).
    ``init``: starting bases (rows [B, M + N - 1], columns [B, M + N - 1]), e.g. the
    ``info["warm_start"]`` of a nearby batch solved before: each problem starts from its
    basis where that is feasible for its marginals (the same optimum in fewer pivots).
    ``simplex_max_iter``: the compiled simplex's pivot budget (default ``max_iter``); the
    problems it leaves unsolved are solved by POT.
    ``max_iter``: the pivot budget per problem (default ``max(100_000, M * N)``).
    ``info``: ``warm_start`` (the final bases) and ``pivots`` [B] with the simplex engine."""
    B, M, N = cost.shape
    if max_iter is None:
        max_iter = max(100_000, M * N)
    engine = pick_engine(engine, a, b, init is not None)
    basis = None if init is None else _check_basis(init, B, M, N, engine)
    out: dict = {}
    value, plan, f, g = _ExactEMD.apply(cost, a, b, max_iter, engine, basis, out, simplex_max_iter)
    info = {}
    if out["basis"] is not None:
        info = {"warm_start": tuple(torch.from_numpy(x) for x in out["basis"]),
                "pivots": torch.from_numpy(out["pivots"])}
    return EMDResult(plan=plan, value=value, potentials=(f, g), solver="exact", info=info)


SPEC = SolverSpec(
    solve_exact,
    {"max_iter": Option(None, int, low=1), "engine": Option("auto", str, choices=ENGINES),
     "simplex_max_iter": Option(None, int, low=0)},
    differentiation="envelope theorem: d value / d cost = plan, d value / d (a, b) = the "
                    "centred dual potentials; the plan carries no gradient",
    envelope=True, warm_starts=True)
