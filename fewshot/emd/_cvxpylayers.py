"""``cvxpylayers``: the EMD linear program with a small quadratic term, as a ``CvxpyLayer``.

Solves min <cost, x> + regularization * |x|^2 over x >= 0 with row sums a and column
sums b (a disciplined-parametrised program in cost, a, b), batched over problems by
cvxpylayers with the SCS cone solver, in float64. The quadratic term makes the
optimum unique and the solution map differentiable.

Differentiation: cvxpylayers/diffcp differentiate the cone program's optimality
conditions (implicitly); gradients reach cost, a and b through the plan, and the
value <plan, cost> is formed with autograd. Results agree with ``exact`` up to the
regularisation and the solver tolerance ``eps``. No dual potentials are returned.
"""
from __future__ import annotations

import functools
import warnings

import torch

from ._problem import EMDResult
from ._solver import Option, SolverSpec


@functools.lru_cache(maxsize=16)
def _layer(M: int, N: int, regularization: float):
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer

    x = cp.Variable((M, N))
    cost = cp.Parameter((M, N))
    a = cp.Parameter(M)
    b = cp.Parameter(N)
    objective = cp.sum(cp.multiply(cost, x))
    if regularization > 0:
        objective = objective + regularization * cp.sum_squares(x)
    problem = cp.Problem(cp.Minimize(objective),
                         [x >= 0, cp.sum(x, axis=1) == a, cp.sum(x, axis=0) == b])
    assert problem.is_dpp()
    return CvxpyLayer(problem, parameters=[cost, a, b], variables=[x])


def solve_cvxpylayers(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                      regularization: float = 1e-4, eps: float = 1e-9,
                      max_iters: int = 100_000) -> EMDResult:
    """Regularised EMD of cost [B, M, N], a [B, M], b [B, N]; see the module docstring."""
    B, M, N = cost.shape
    f64 = torch.float64
    a64 = a.to(f64)
    b64 = b.to(f64) * (a64.sum(1, keepdim=True) / b.to(f64).sum(1, keepdim=True))
    layer = _layer(M, N, float(regularization))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        plan, = layer(cost.to(f64), a64, b64,
                      solver_args={"eps": eps, "max_iters": max_iters, "acceleration_lookback": 0})
    plan = plan.reshape(B, M, N)
    value = (plan * cost.to(f64)).sum((1, 2))
    return EMDResult(plan=plan.to(cost.dtype), value=value.to(cost.dtype), solver="cvxpylayers",
                     info={"regularization": regularization})


SPEC = SolverSpec(
    solve_cvxpylayers,
    {"regularization": Option(1e-4, float, low=0),
     "eps": Option(1e-9, float, low=0, low_open=True),
     "max_iters": Option(100_000, int, low=1)},
    differentiation="cvxpylayers: the derivative of the cone program's solution map (diffcp); "
                    "gradients reach cost, a and b through the plan")
