"""``exact``: the linear-programming optimum by the network simplex (POT's C++ solver).

Differentiation (envelope theorem): the value V(cost, a, b) of the LP is
differentiable almost everywhere with dV/dcost = plan, dV/da = f and dV/db = g,
where (f, g) are the dual potentials, each centred to zero mean as in POT (the
shift f + c, g - c is not determined by the LP; along perturbations that keep
sum(a) = sum(b) every choice gives the same derivative). ``result.potentials`` is
a dual optimum itself (mean(f) = 0, value = <f, a> + <g, b>). The plan itself is piecewise
constant in ``cost`` and is returned without gradient; losses should be written
through ``value`` (DeepEMD's logits are: sum(plan * (1 - cost)) = mass - value).
Problems are solved on the CPU in float64 and the results moved back to the
input's device and dtype.
"""
from __future__ import annotations

import numpy as np
import torch

from ._problem import EMDResult


def _network_simplex(cost: np.ndarray, a: np.ndarray, b: np.ndarray, max_iter: int):
    from ot.lp.emd_wrap import emd_c

    B, M, N = cost.shape
    plan = np.empty((B, M, N))
    f = np.empty((B, M))
    g = np.empty((B, N))
    value = np.empty(B)
    for i in range(B):
        bi = b[i] * (a[i].sum() / b[i].sum())  # equal masses to machine precision
        plan[i], value[i], f[i], g[i], code = emd_c(a[i], bi, cost[i], max_iter, 1)
        if code != 1:
            raise RuntimeError(f"network simplex did not reach the optimum of problem {i} "
                               f"(code {code}); raise max_iter")
    return plan, value, f, g


class _ExactEMD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost, a, b, max_iter):
        to_np = lambda t: np.ascontiguousarray(t.detach().to("cpu", torch.float64).numpy())  # noqa: E731
        plan, value, f, g = _network_simplex(to_np(cost), to_np(a), to_np(b), max_iter)
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
                grad_value[:, None] * g, None)


def solve_exact(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                max_iter: int = 100_000) -> EMDResult:
    """Exact EMD of cost [B, M, N], a [B, M], b [B, N]; see the module docstring."""
    value, plan, f, g = _ExactEMD.apply(cost, a, b, max_iter)
    return EMDResult(plan=plan, value=value, potentials=(f, g), solver="exact")
