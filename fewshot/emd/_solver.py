"""EMD solvers as objects: built once from a name and options, every option checked then.

A solver is declared by a :class:`SolverSpec`: the function that solves a batch, the
options it takes (:class:`Option`: default, type, range or choices), what it needs
besides (cost, a, b) and what it offers (node coordinates ``x`` / ``y``, warm starts
from ``init`` potentials) and how it differentiates. :func:`make_solver` turns a name
and an options dict into a :class:`Solver`, raising :class:`~fewshot.errors.OptionError`
naming the option (``where.key``) for an unknown key, a wrong type or a value out of
range, so a bad option is reported when a model is built, not at its first solve.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from ..errors import OptionError
from ..options import Option
from ._problem import EMDInputError, EMDResult, check_points, check_problem


@dataclass(frozen=True)
class SolverSpec:
    """What the registry knows of a solver.

    fn: ``fn(cost, a, b, **options[, x, y][, init]) -> EMDResult``.
    options: name -> :class:`Option` of every option ``fn`` takes.
    differentiation: how gradients reach cost, a and b (one line).
    needs_points: ``fn`` takes the node coordinates ``x`` [B, M, D] and ``y`` [B, N, D].
    warm_starts: ``fn`` takes ``init``, a state to start from that a result of nearby
        problems carries as ``info["warm_start"]`` (sinkhorn: the potentials f [B, M],
        g [B, N]; exact: the optimal bases, rows and columns [B, M + N - 1]).
    check: optional ``check(options, where)`` run on the checked options, for what one
        option alone cannot say (a file that must exist, options that exclude each other).
    envelope: the gradient is the envelope theorem's: d value / d cost = plan and
        d value / d (a, b) = the returned potentials (up to a constant), so callers may
        form gradients in closed form from the result instead of through autograd.
    """
    fn: Callable[..., EMDResult]
    options: Dict[str, Option] = field(default_factory=dict)
    differentiation: str = ""
    needs_points: bool = False
    warm_starts: bool = False
    check: Optional[Callable[[Dict[str, Any], str], None]] = None
    envelope: bool = False


def spec_from_signature(fn: Callable, **kw: Any) -> SolverSpec:
    """A SolverSpec whose options are ``fn``'s keyword arguments after (cost, a, b), typed by
    their defaults (no ranges): for solvers registered without a declared option table."""
    options = {}
    for name, p in list(inspect.signature(fn).parameters.items())[3:]:
        if name in ("x", "y", "init") or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        d = p.default
        kind = type(d) if isinstance(d, (bool, int, float, str)) else object
        options[name] = Option(None if d is inspect.Parameter.empty else d, kind)
    return SolverSpec(fn, options, **kw)


class Solver:
    """An EMD solver with checked options; call it on a batch of problems.

        solver = make_solver("sinkhorn", {"epsilon": 0.05})
        result = solver(cost, a, b)          # cost [B, M, N], a [B, M], b [B, N]

    Attributes: ``name``, ``options`` (every option, defaults filled in), ``spec`` (its
    :class:`SolverSpec`, where its capabilities are declared, read through the properties
    ``needs_points``, ``warm_starts``, ``differentiation`` and ``envelope``).
    """

    def __init__(self, name: str, spec: SolverSpec, options: Dict[str, Any]):
        self.name, self.spec, self.options = name, spec, options

    needs_points = property(lambda self: self.spec.needs_points)
    warm_starts = property(lambda self: self.spec.warm_starts)
    differentiation = property(lambda self: self.spec.differentiation)
    envelope = property(lambda self: self.spec.envelope)

    def __call__(self, cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *,
                 x: Optional[torch.Tensor] = None, y: Optional[torch.Tensor] = None,
                 init: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> EMDResult:
        """Solve cost [B, M, N], a [B, M], b [B, N]; ``x`` [B, M, D] and ``y`` [B, N, D] for
        solvers that need node coordinates, ``init`` (a previous result's
        ``info["warm_start"]``, per problem) for those that warm-start. The result carries
        the problem (``result.problem``). Raises EMDInputError naming the argument for
        invalid tensors."""
        check_problem(cost, a, b)
        extra: Dict[str, Any] = {}
        if self.needs_points:
            if x is not None and y is not None:
                check_points(x, y)
            extra.update(x=x, y=y)
        elif x is not None or y is not None:
            raise EMDInputError(f"EMD solver {self.name!r} does not use node coordinates x, y")
        if init is not None:
            if not self.warm_starts:
                raise EMDInputError(f"EMD solver {self.name!r} does not warm-start; pass no init")
            extra["init"] = init
        result = self.spec.fn(cost, a, b, **self.options, **extra)
        result.problem = (cost, a, b)
        return result

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items() if not isinstance(v, torch.nn.Module))
        return f"Solver({self.name!r}, {opts})"


def build(name: str, spec: SolverSpec, options: Optional[Dict[str, Any]], where: str) -> Solver:
    """Check ``options`` against ``spec`` (errors name ``where.key``) and build the Solver."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise OptionError(where, f"unknown option(s) {', '.join(map(repr, unknown))} of EMD solver "
                                 f"{name!r}; accepted: {', '.join(spec.options) or '(none)'}")
    checked = {k: opt.check(options[k], f"{where}.{k}") if k in options else opt.default
               for k, opt in spec.options.items()}
    if spec.check is not None:
        spec.check(checked, where)
    return Solver(name, spec, checked)
