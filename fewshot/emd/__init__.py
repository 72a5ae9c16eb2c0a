"""Differentiable Earth Mover's Distance layers behind one function.

    result = fewshot.emd.solve(cost, a, b, solver="exact", **options)

``cost`` [B, M, N], ``a`` [B, M], ``b`` [B, N] (non-negative, each problem's ``a``
and ``b`` with the same total mass); the result carries ``plan`` [B, M, N],
``value`` [B] and, where the solver has them, ``potentials`` (f [B, M], g [B, N]).
As in OTT-JAX and POT, problem, solver and result are kept apart: a solver is
built once from its name and options (:func:`make_solver`), which checks every
option's type and range then, and is called on problems; ``solve`` does both. Each
solver's :class:`SolverSpec` declares its options, how it differentiates
(``Solver.differentiation``), whether it needs the node positions ``x`` [B, M, D] and
``y`` [B, N, D] (``needs_points``, e.g. ``chain``) and whether it starts from the
``init`` a nearby result carries as ``info["warm_start"]`` (``warm_starts``: ``sinkhorn``
its potentials, ``exact`` its optimal bases).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from ..errors import ConfigError, OptionError
from ..registry import Registry
from . import _chain, _cvxpylayers, _exact, _learned, _qpth, _sinkhorn, _tree
from ._chain import chain_emd, monotone_plan
from ._learned import SHIPPED_MODELS as LEARNED_MODELS, MatchingTransformer, learned_emd, \
    pointcloud_options as learned_pointcloud_options
from ._problem import EMDInputError, EMDResult, EMDSolverError
from ._solver import Option, Solver, SolverSpec, build, spec_from_signature
from .hierarchy import ClassTree, TreeEMDLoss, tree_emd

SOLVERS = Registry("EMD solver")   # name -> SolverSpec
for _name, _module in (("exact", _exact), ("qpth", _qpth), ("sinkhorn", _sinkhorn),
                      ("cvxpylayers", _cvxpylayers), ("tree", _tree), ("chain", _chain),
                      ("learned", _learned)):
    SOLVERS.register(_name)(_module.SPEC)


def solvers() -> List[str]:
    """Names of the registered solvers."""
    return SOLVERS.names()


def spec(name: str) -> SolverSpec:
    """The registered SolverSpec of solver ``name`` (ConfigError for an unknown name)."""
    return SOLVERS.get(name)


def make_solver(name: str, options: Optional[Dict[str, Any]] = None, where: str = "") -> Solver:
    """Build solver ``name`` with ``options``, checking every option's type and range.

    Errors are OptionErrors (ConfigErrors) naming ``where.key`` (``where`` defaults to the solver name),
    e.g. ``model.options.solver_options.epsilon: expected a finite number > 0, got -1``."""
    if not isinstance(name, str):
        raise OptionError(where or "solver", f"expected an EMD solver name, got {name!r}")
    if options is not None and not isinstance(options, dict):
        raise OptionError(where or name, f"expected a mapping of solver options, got {options!r}")
    return build(name, spec(name), options, where or name)


def register_solver(name: str, options: Optional[Dict[str, Option]] = None, differentiation: str = "",
                    needs_points: bool = False, warm_starts: bool = False, envelope: bool = False,
                    check: Optional[Callable[[Dict[str, Any], str], None]] = None) -> Callable:
    """Decorator adding ``fn(cost, a, b, **options) -> EMDResult`` as solver ``name``, with
    the capabilities of a :class:`SolverSpec` (how it differentiates, whether it needs the
    points, warm-starts, or has the envelope theorem's gradient, which lets DeepEMD's
    Structured FC take its closed-form path; ``check`` for options that depend on each other).

    ``options``: name -> Option of every option (default: ``fn``'s keyword arguments,
    typed by their defaults, without range checks)."""
    def decorator(fn: Callable) -> Callable:
        kw = dict(differentiation=differentiation, needs_points=needs_points, warm_starts=warm_starts,
                  envelope=envelope, check=check)
        SOLVERS.register(name)(SolverSpec(fn, options, **kw) if options is not None
                               else spec_from_signature(fn, **kw))
        return fn
    return decorator


def solve(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, solver: Union[str, Solver] = "exact", *,
          x: Optional[torch.Tensor] = None, y: Optional[torch.Tensor] = None,
          init: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, **options) -> EMDResult:
    """Solve the batch of EMD problems (cost [B, M, N], a [B, M], b [B, N]) with ``solver``
    (a name and its ``options``, or a built :class:`Solver`).

    ``x`` [B, M, D], ``y`` [B, N, D]: node coordinates, for solvers that need them;
    ``init``: a previous result's ``info["warm_start"]``, for solvers that warm-start.
    Raises EMDInputError (naming the argument) for NaN/inf, negative or zero-mass
    weights, unequal masses, mismatched shapes, dtypes or devices; unknown or invalid
    solver options raise ConfigError. The result lies on the input's device, in its dtype.
    """
    if isinstance(solver, Solver):
        if options:
            raise ConfigError(f"solve: options {sorted(options)} given with a built solver; "
                              f"build it with them instead")
    else:
        solver = make_solver(solver, options)
    return solver(cost, a, b, x=x, y=y, init=init)


__all__ = ["solve", "solvers", "make_solver", "spec", "register_solver", "SOLVERS", "Solver", "SolverSpec",
           "Option", "EMDResult", "EMDInputError", "EMDSolverError", "ClassTree", "TreeEMDLoss", "tree_emd",
           "chain_emd", "monotone_plan", "MatchingTransformer",
           "learned_emd", "LEARNED_MODELS", "learned_pointcloud_options"]
