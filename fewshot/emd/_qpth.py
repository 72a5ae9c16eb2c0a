"""``qpth``: the DeepEMD paper's quadratic-programming layer (Amos & Kolter's OptNet solver).

Forms (as in the official DeepEMD code):
  * ``"L2"``: min <cost, x> + l2_strength / 2 * |x|^2   (default, l2_strength 1e-6)
  * ``"QP"``: min 1/2 <cost, x>^2 + qp_ridge / 2 * |x|^2 (qp_ridge 1e-4)
over transport plans x >= 0 with row sums a and column sums b. ``l2_strength`` and
``qp_ridge`` are in the units of the official code (weights scaled to sum to the
number of nodes, cosine costs): they are applied to the problem as given.

Differentiation: qpth's implicit differentiation of the KKT conditions; gradients
reach ``cost`` through the plan and the value, and ``a``, ``b`` through the plan.
No dual potentials are returned.

Reliability: the problem is solved in float64 (float32 answers are wrong by up to
~150%) and in normalised units: the plan is divided by the total mass and the cost
by its largest magnitude, with the regulariser rescaled so that the optimum is the
same. The marginals are equality constraints with the one redundant column-sum row
dropped, so the equality matrix has full row rank. A non-finite answer raises
:class:`EMDSolverError` instead of being returned.
"""
from __future__ import annotations

import torch

from ._problem import EMDResult, EMDSolverError
from ._solver import Option, SolverSpec


def marginal_matrix(M: int, N: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Equality rows [M + N - 1, M * N] of a flattened (row-major) M x N plan: M row sums,
    then the first N - 1 column sums (the last is implied by equal total mass)."""
    rows = torch.kron(torch.eye(M, dtype=dtype, device=device), torch.ones(1, N, dtype=dtype, device=device))
    cols = torch.kron(torch.ones(1, M, dtype=dtype, device=device), torch.eye(N, dtype=dtype, device=device))
    return torch.cat([rows, cols[: N - 1]])


def solve_qpth(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, form: str = "L2",
               l2_strength: float = 1e-6, qp_ridge: float = 1e-4, max_iter: int = 30,
               eps: float = 1e-12) -> EMDResult:
    """Regularised EMD of cost [B, M, N], a [B, M], b [B, N] with qpth; see the module docstring."""
    from qpth.qp import QPFunction

    B, M, N = cost.shape
    dev, f64 = cost.device, torch.float64
    c = cost.to(f64)
    mass = a.to(f64).sum(-1)                                      # [B]
    scale = c.detach().abs().amax(dim=(1, 2)).clamp_min(1e-12)     # [B]
    q = (c / scale[:, None, None]).reshape(B, M * N)
    eye = torch.eye(M * N, dtype=f64, device=dev)
    if form == "L2":
        # x = mass * y, cost = scale * q:  <cost,x> + l2/2 |x|^2  ∝  <q,y> + (l2 * mass / scale)/2 |y|^2
        Q = (l2_strength * mass / scale.detach())[:, None, None] * eye
        p = q
    else:
        # 1/2 <cost,x>^2 + r/2 |x|^2  ∝  1/2 <q,y>^2 + (r / scale^2)/2 |y|^2
        Q = q.unsqueeze(2) * q.unsqueeze(1) + (qp_ridge / scale.detach() ** 2)[:, None, None] * eye
        p = torch.zeros_like(q)
    G = -eye.expand(B, -1, -1)
    h = torch.zeros(B, M * N, dtype=f64, device=dev)
    A = marginal_matrix(M, N, f64, dev).expand(B, -1, -1)
    rhs = torch.cat([a.to(f64), b.to(f64)[:, : N - 1]], dim=1) / mass[:, None]
    y = QPFunction(verbose=-1, eps=eps, maxIter=max_iter, check_Q_spd=False)(Q, p, G, h, A, rhs)
    if not bool(torch.isfinite(y).all()):
        raise EMDSolverError("qpth returned a non-finite plan; try solver 'exact' or a larger "
                             "l2_strength")
    plan = (mass[:, None] * y).reshape(B, M, N)
    value = (plan * c).sum(dim=(1, 2))
    return EMDResult(plan=plan.to(cost.dtype), value=value.to(cost.dtype), solver="qpth",
                     info={"form": form})


SPEC = SolverSpec(
    solve_qpth,
    {"form": Option("L2", str, choices=("L2", "QP")),
     "l2_strength": Option(1e-6, float, low=0, low_open=True),
     "qp_ridge": Option(1e-4, float, low=0, low_open=True),
     "max_iter": Option(30, int, low=1),
     "eps": Option(1e-12, float, low=0, low_open=True)},
    differentiation="implicit differentiation of the QP's KKT conditions (qpth): gradients "
                    "reach cost through plan and value, a and b through the plan")
