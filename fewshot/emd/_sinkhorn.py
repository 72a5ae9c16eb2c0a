"""``sinkhorn``: entropic optimal transport by log-domain Sinkhorn iterations.

Solves min_P <P, cost> + epsilon * sum P (log P - 1) over P >= 0 with row sums a and
column sums b; the plan is P = exp((f_i + g_j - cost_ij) / epsilon) for the returned
potentials (f, g). Iterations stay in the log domain (log-sum-exp), so float32 is
stable down to epsilon = 1e-3 on costs of order 1; optional epsilon scaling starts
at the largest cost and shrinks by ``epsilon_scaling`` per stage, warm-starting the
potentials. ``init`` = (f [B, M], g [B, N]) warm-starts the iterations from given
potentials (e.g. those of a nearby problem solved a step earlier) at the target epsilon,
which reaches the same fixed point in far fewer iterations. ``value`` is the transport
cost <P, cost> (which tends to the EMD as epsilon -> 0); ``info`` reports per problem the
L1 marginal error relative to the mass, whether it reached ``tol`` and the iteration count.

Engine: where the costs' span (max - min) over epsilon fits half the dtype's exponent range
(float64: 354, float32: 43.7), each log-sum-exp is computed as a product with the kernel
K = exp(-(cost - min cost) / epsilon), formed once, on potentials shifted by their maximum:
the same iterates as the log domain, one matrix product instead of exp over [B, M, N] per
half-step (a cost expanded over the batch keeps one [M, N] kernel). Beyond that span, or
with ``engine: log``, every reduction is a log-sum-exp, stable for any epsilon.

Differentiation (``gradient``):
  * ``"implicit"`` (default): exact derivative of <P, cost> at the Sinkhorn fixed
    point by the implicit-function theorem: one dense (M + N) x (M + N) symmetric
    eigendecomposition per problem, no stored iterations. With z solving
    H z = [(P * cost) 1; (P * cost)^T 1], H = [[diag(a), P], [P^T, diag(b)]] (by
    pseudo-inverse: H is singular along the gauge (1, -1) and, where entries of P
    underflow, between disconnected blocks):
    d value / d cost = P * (1 + (z_f + z_g - cost) / epsilon),
    d value / d a = z_f, d value / d b = z_g (centred).
  * ``"unrolled"``: autograd through every iteration (memory grows with iterations).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from ._problem import EMDInputError, EMDResult, EMDSolverError, _distinct
from ._solver import Option, SolverSpec


def _lse(x: torch.Tensor, dim: int) -> torch.Tensor:
    """log-sum-exp with exponents clipped at -60 below the maximum: terms that small change
    nothing in float32 or float64, and clipping keeps the CPU out of slow subnormal arithmetic."""
    m = x.amax(dim=dim, keepdim=True).detach()
    return (m + torch.exp((x - m).clamp_min(-60.0)).sum(dim=dim, keepdim=True).log()).squeeze(dim)


def _span_limit(dtype: torch.dtype) -> float:
    """Largest (max cost - min cost) / epsilon for which exp(-(cost - min cost) / epsilon) and
    its products stay far from underflow: half the exponent range of ``dtype`` (float64 354,
    float32 43.7)."""
    return -math.log(torch.finfo(dtype).tiny) / 2


class _LogSumExp:
    """The two reductions of a Sinkhorn iteration on the problems ``cost`` [B, M, N]:
    rows(g) [B, M] = lse_j (g_j - cost_ij) / eps and cols(f) [B, N] = lse_i (f_i - cost_ij) / eps.

    ``kernel`` False: log-sum-exp over [B, M, N] at every call (stable for any epsilon).
    ``kernel`` True: products with K = exp(-(cost - min cost) / eps), formed once, and the
    potentials shifted by their maximum (lse_j (g_j - c_ij)/eps = m + log sum_j K_ij
    exp(g_j/eps - m) - min c/eps): the same numbers while (max cost - min cost) / eps stays
    within :func:`_span_limit`, at the price of a matrix product per reduction. A cost that is
    one matrix expanded over the batch (stride 0, e.g. ``cost[None].expand(B, -1, -1)``) keeps
    one K [M, N] for the whole batch."""

    def __init__(self, cost: torch.Tensor, eps: float, kernel: bool):
        self.cost, self.eps, self.kernel = cost, eps, kernel
        self.shared = cost.stride(0) == 0 and cost.shape[0] > 1
        if kernel:
            c = cost[:1] if self.shared else cost
            low = c.detach().amin((1, 2), keepdim=True)
            self.K = torch.exp((low - c) / eps)                          # [B or 1, M, N]
            self.low = low[:, :, 0] / eps                                # [B or 1, 1]

    @staticmethod
    def stable(cost: torch.Tensor, eps: float) -> bool:
        low, high = (float(v) for v in torch.aminmax(_distinct(cost.detach())))
        return (high - low) / eps <= _span_limit(cost.dtype)

    def select(self, keep: torch.Tensor) -> "_LogSumExp":
        """The same reductions for the problems ``keep`` (a boolean mask [B]); a shared cost
        stays one expanded matrix (no [B', M, N] copy)."""
        other = object.__new__(_LogSumExp)
        other.__dict__.update(self.__dict__)
        if self.shared:
            other.cost = self.cost[:1].expand(int(keep.sum()), -1, -1)
            other.shared = other.cost.shape[0] > 1
        else:
            other.cost = self.cost[keep]
            if self.kernel:
                other.K, other.low = self.K[keep], self.low[keep]
        return other

    @staticmethod
    def _product(K: torch.Tensor, v: torch.Tensor, transpose: bool) -> torch.Tensor:
        """K v [B, M] (or K^T v [B, N]) for K [B or 1, M, N] and v [B, N] (or [B, M])."""
        if K.shape[0] == 1:
            return v @ (K[0] if transpose else K[0].t())
        return torch.bmm(K.transpose(1, 2) if transpose else K, v[:, :, None])[:, :, 0]

    def _reduce(self, h: torch.Tensor, transpose: bool) -> torch.Tensor:
        if not self.kernel:
            x = (h[:, :, None] - self.cost) / self.eps if transpose else (h[:, None, :] - self.cost) / self.eps
            return _lse(x, 1 if transpose else 2)
        m = (h / self.eps).amax(1, keepdim=True).detach()
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        return self._product(self.K, torch.exp(h / self.eps - m), transpose).log() + m - self.low

    def rows(self, g: torch.Tensor) -> torch.Tensor:
        return self._reduce(g, transpose=False)

    def cols(self, f: torch.Tensor) -> torch.Tensor:
        return self._reduce(f, transpose=True)

    def value(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """<P, cost> [B] of the plan P_ij = exp((f_i + g_j - cost_ij) / eps), without forming P
        when ``kernel`` (products with K * cost)."""
        if not self.kernel:
            return (_plan(self.cost, f, g, self.eps) * self.cost).sum((1, 2))
        c = self.cost[:1] if self.K.shape[0] == 1 else self.cost
        KC = self.K * c
        mf = (f / self.eps).amax(1, keepdim=True).detach()
        mg = (g / self.eps).amax(1, keepdim=True).detach()
        u, v = torch.exp(f / self.eps - mf), torch.exp(g / self.eps - mg)
        return (u * self._product(KC, v, False)).sum(1) * torch.exp(mf + mg - self.low)[:, 0]


def _iterate(ops, log_a, log_b, f, g, max_iter, tol, mass, check_every=10):
    """Sinkhorn iterations from (f, g) until every problem's L1 marginal error (relative to
    its mass) is at most ``tol`` or ``max_iter``; returns f, g, the iterations of the slowest
    problem and the errors [B]. Without autograd through the iterations, a problem that has
    converged stops iterating (the batch shrinks to the unconverged ones at each check), so a
    large batch costs what its problems need, not what its slowest one needs times the batch."""
    cost, eps = ops.cost, ops.eps
    B = cost.shape[0]
    err = torch.full((B,), float("inf"), dtype=cost.dtype, device=cost.device)
    mask = not (cost.requires_grad or log_a.requires_grad or log_b.requires_grad) and tol > 0
    f, g = (f.clone(), g.clone()) if mask else (f, g)
    active = torch.arange(B, device=cost.device)
    la, lb, fa, ga, ma = log_a, log_b, f, g, mass
    it = 0
    while it < max_iter:
        fa = eps * (la - ops.rows(ga))
        ga = eps * (lb - ops.cols(fa))
        it += 1
        if it % check_every == 0 or it == max_iter:
            with torch.no_grad():          # row sums of the plan: exp(f_i / eps + rows_i(g))
                e = (torch.exp(fa / eps + ops.rows(ga)) - la.exp()).abs().sum(1) / ma
            if not mask:
                f, g, err = fa, ga, e
                if bool((e <= tol).all()):
                    break
                continue
            f[active], g[active], err[active] = fa, ga, e
            left = e > tol
            if not bool(left.any()):
                break
            if not bool(left.all()):              # drop the converged problems
                active, la, lb, fa, ga, ma = (t[left] for t in (active, la, lb, fa, ga, ma))
                ops = ops.select(left)
    return f, g, it, err       # every exit follows a check, which stored fa, ga


def _plan(cost, f, g, eps):
    return torch.exp((f[:, :, None] + g[:, None, :] - cost) / eps)


class _ImplicitValue(torch.autograd.Function):
    """value = <P, cost> with the implicit-function-theorem gradient (see module docstring)."""

    @staticmethod
    def forward(ctx, cost, a, b, plan, eps):
        ctx.save_for_backward(cost, a, b, plan)
        ctx.eps = eps
        return (plan * cost).sum((1, 2))

    @staticmethod
    def backward(ctx, grad_value):
        cost, a, b, plan = ctx.saved_tensors
        eps = ctx.eps
        B, M, N = cost.shape
        dt = torch.float64  # the KKT solve is done in float64 for accuracy
        P, C = plan.to(dt), cost.to(dt)
        H = torch.zeros(B, M + N, M + N, dtype=dt, device=cost.device)
        H[:, :M, :M] = torch.diag_embed(P.sum(2))
        H[:, M:, M:] = torch.diag_embed(P.sum(1))
        H[:, :M, M:] = P
        H[:, M:, :M] = P.transpose(1, 2)
        PC = P * C
        w = torch.cat([PC.sum(2), PC.sum(1)], dim=1)
        # H is positive semi-definite with the gauge (1, -1) in its null space; entries of P
        # that underflow split the bipartite graph into blocks and add more (numerical) null
        # directions, along which a plain solve returns round-off noise of order 1e16. The
        # pseudo-inverse drops every direction with an eigenvalue below 1e-12 of the largest
        # (the minimum-norm solution: no mass moves between disconnected blocks).
        lam, V = torch.linalg.eigh(H)
        inv = torch.where(lam > 1e-12 * lam[:, -1:], 1 / lam, torch.zeros_like(lam))
        z = (V @ (inv * (V.transpose(1, 2) @ w[:, :, None])[:, :, 0])[:, :, None])[:, :, 0]
        zf, zg = z[:, :M], z[:, M:]
        gc = P * (1 + (zf[:, :, None] + zg[:, None, :] - C) / eps)
        ga = zf - zf.mean(1, keepdim=True)
        gb = zg - zg.mean(1, keepdim=True)
        gv = grad_value.to(dt)
        return ((gv[:, None, None] * gc).to(cost.dtype), (gv[:, None] * ga).to(a.dtype),
                (gv[:, None] * gb).to(b.dtype), None, None)


def _check_init(init, B, M, N, cost):
    if not (isinstance(init, (tuple, list)) and len(init) == 2
            and all(isinstance(t, torch.Tensor) for t in init)):
        raise EMDInputError("sinkhorn init must be a pair of tensors (f [B, M], g [B, N])")
    f, g = init
    if tuple(f.shape) != (B, M) or tuple(g.shape) != (B, N):
        raise EMDInputError(f"sinkhorn init must have shapes f [{B}, {M}], g [{B}, {N}] to match cost "
                         f"{tuple(cost.shape)}, got f {tuple(f.shape)}, g {tuple(g.shape)}")
    if not bool(torch.isfinite(f).all() and torch.isfinite(g).all()):
        raise EMDInputError("sinkhorn init contains NaN or infinite potentials")
    return (f.detach().to(device=cost.device, dtype=cost.dtype),
            g.detach().to(device=cost.device, dtype=cost.dtype))


def solve_sinkhorn(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, epsilon: float = 0.01,
                   max_iter: int = 5000, tol: float = 1e-3, epsilon_scaling: float = 0.0,
                   gradient: str = "implicit", on_unconverged: str = "error", engine: str = "auto",
                   return_plan: bool = True,
                   init: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> EMDResult:
    """Entropic EMD of cost [B, M, N], a [B, M], b [B, N]; see the module docstring.

    ``init``: optional starting potentials (f [B, M], g [B, N]), e.g. a previous result's
    ``potentials``; they replace the cold start and any epsilon scaling.
    ``on_unconverged``: ``"error"`` raises EMDSolverError when a problem's marginal error is
    still above 10 * ``tol`` after ``max_iter`` iterations (its plan would be far from
    feasible: typically ``epsilon`` is tiny against the costs); ``"ignore"`` returns it,
    with ``info["converged"]`` False.
    ``engine``: ``"auto"`` iterates with products by the kernel exp(-cost / epsilon) where the
    costs' span over epsilon allows it in the cost's dtype (see :class:`_LogSumExp`), else
    with log-sum-exp; ``"log"`` always with log-sum-exp. ``info["engine"]`` says which ran.
    ``return_plan`` False: ``plan`` is None (with ``gradient="unrolled"`` and the kernel
    engine, no [B, M, N] tensor beyond the kernel is formed)."""
    if cost.dtype in (torch.float16, torch.bfloat16):      # iterate in float32, answer in the input's dtype
        half = cost.dtype
        r = solve_sinkhorn(cost.float(), a.float(), b.float(), epsilon, max_iter, tol, epsilon_scaling,
                           gradient, on_unconverged, engine, return_plan,
                           None if init is None else tuple(t.float() for t in init))
        f, g = r.potentials
        return EMDResult(plan=None if r.plan is None else r.plan.to(half), value=r.value.to(half),
                         potentials=(f.to(half), g.to(half)), solver="sinkhorn",
                         info={**r.info, "computed_in": "float32"})
    B, M, N = cost.shape
    unrolled = gradient == "unrolled"
    c = cost if unrolled else cost.detach()
    log_a = (a if unrolled else a.detach()).log()
    log_b = (b if unrolled else b.detach()).log()
    mass = a.detach().sum(1)
    f = torch.zeros(B, M, dtype=cost.dtype, device=cost.device)
    g = torch.zeros(B, N, dtype=cost.dtype, device=cost.device)
    if init is not None:
        f, g = _check_init(init, B, M, N, cost)
    schedule = [epsilon]
    if epsilon_scaling and init is None:
        start = max(float(c.detach().abs().max()), epsilon)
        k = max(0, math.ceil(math.log(epsilon / start) / math.log(epsilon_scaling)))
        schedule = [max(epsilon, start * epsilon_scaling ** i) for i in range(k)] + [epsilon]
    kernel = engine == "auto" and _LogSumExp.stable(c, epsilon)      # the smallest epsilon decides
    total = 0
    for i, eps in enumerate(schedule):
        last = i == len(schedule) - 1
        ops = _LogSumExp(c, eps, kernel)
        f, g, it, err = _iterate(ops, log_a, log_b, f, g, max_iter if last else 20,
                                 tol if last else 1e-2, mass)
        total += it
    plan = None
    if unrolled:
        if return_plan:
            plan = _plan(c, f, g, epsilon)
        value = ops.value(f, g)
    else:
        plan = _plan(c, f, g, epsilon)
        value = _ImplicitValue.apply(cost, a, b, plan, epsilon)
        plan = plan if return_plan else None
    if on_unconverged == "error" and bool((err > 10 * tol).any()):
        worst = int(err.argmax())
        scale = float(c[worst].abs().max())
        raise EMDSolverError(
            f"sinkhorn did not converge: problem {worst} has marginal error {float(err[worst]):.3g} "
            f"after {total} iterations (tol {tol:g}, epsilon {epsilon:g}, costs up to {scale:.3g}); "
            f"raise max_iter or epsilon (relative to the costs), or set epsilon_scaling")
    info = {"marginal_error": err, "converged": err <= tol, "iterations": total,
            "warm_start": (f.detach(), g.detach()), "engine": "kernel" if kernel else "log",
            "epsilon": epsilon, "gradient": gradient}
    return EMDResult(plan=plan if unrolled or plan is None else plan.detach(), value=value,
                     potentials=(f.detach(), g.detach()), solver="sinkhorn", info=info)


SPEC = SolverSpec(
    solve_sinkhorn,
    {"epsilon": Option(0.01, float, low=0, low_open=True),
     "max_iter": Option(5000, int, low=1),
     "tol": Option(1e-3, float, low=0, low_open=True),
     "epsilon_scaling": Option(0.0, float, low=0, high=1, high_open=True),
     "gradient": Option("implicit", str, choices=("implicit", "unrolled")),
     "on_unconverged": Option("error", str, choices=("error", "ignore")),
     "engine": Option("auto", str, choices=("auto", "log")),
     "return_plan": Option(True, bool)},
    differentiation="implicit (default): implicit-function theorem at the Sinkhorn fixed point; "
                    "unrolled: autograd through the iterations",
    warm_starts=True)
