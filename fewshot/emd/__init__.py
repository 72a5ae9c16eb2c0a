"""Differentiable Earth Mover's Distance layers behind one function.

    result = fewshot.emd.solve(cost, a, b, solver="exact", **options)

``cost`` [B, M, N], ``a`` [B, M], ``b`` [B, N] (non-negative, each problem's ``a``
and ``b`` with the same total mass); the result carries ``plan`` [B, M, N],
``value`` [B] and, where the solver has them, ``potentials`` (f [B, M], g [B, N]).
Solvers are registered by name (:func:`solvers`); each module states how its
solver differentiates. Solvers that work on node positions (``chain``) also take the
nodes as options ``x`` [B, M, D] and ``y`` [B, N, D] (:func:`needs_points`); solvers
that can start from given potentials take ``init`` = (f [B, M], g [B, N])
(:func:`warm_starts`).
"""
from __future__ import annotations

from typing import Callable, List

import torch

from ..registry import Registry
from ._chain import chain_emd, monotone_plan, solve_chain
from ._cvxpylayers import solve_cvxpylayers
from ._exact import solve_exact
from ._learned import MatchingTransformer, learned_emd, solve_learned
from ._problem import EMDInputError, EMDResult, check_problem
from ._qpth import EMDSolverError, solve_qpth
from ._sinkhorn import solve_sinkhorn
from ._tree import solve_tree
from .hierarchy import TreeEMDLoss, tree_emd

SOLVERS = Registry("EMD solver")
SOLVERS.register("exact")(solve_exact)
SOLVERS.register("qpth")(solve_qpth)
SOLVERS.register("sinkhorn")(solve_sinkhorn)
SOLVERS.register("cvxpylayers")(solve_cvxpylayers)
SOLVERS.register("tree")(solve_tree)
SOLVERS.register("chain")(solve_chain)
SOLVERS.register("learned")(solve_learned)


def solvers() -> List[str]:
    """Names of the registered solvers."""
    return SOLVERS.names()


def needs_points(solver: str) -> bool:
    """Whether ``solver`` needs the node positions ``x`` and ``y`` besides ``cost``."""
    return bool(getattr(SOLVERS.get(solver), "needs_points", False))


def warm_starts(solver: str) -> bool:
    """Whether ``solver`` accepts ``init`` potentials (f [B, M], g [B, N]) to start from."""
    return bool(getattr(SOLVERS.get(solver), "warm_start", False))


def register_solver(name: str) -> Callable:
    """Decorator adding ``fn(cost, a, b, **options) -> EMDResult`` as solver ``name``."""
    return SOLVERS.register(name)


def solve(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, solver: str = "exact",
          **options) -> EMDResult:
    """Solve the batch of EMD problems (cost [B, M, N], a [B, M], b [B, N]) with ``solver``.

    Raises EMDInputError (naming the argument) for NaN/inf, negative or zero-mass
    weights, unequal masses, mismatched shapes, dtypes or devices; unknown solver
    options raise ConfigError. The result lies on the input's device, in its dtype.
    """
    check_problem(cost, a, b)
    return SOLVERS.create(solver, where=f"options of EMD solver {solver!r}", cost=cost, a=a, b=b,
                          **options)


__all__ = ["solve", "solvers", "register_solver", "EMDResult", "EMDInputError", "EMDSolverError",
           "SOLVERS", "TreeEMDLoss", "tree_emd", "chain_emd", "monotone_plan", "needs_points", "warm_starts",
           "MatchingTransformer", "learned_emd"]
