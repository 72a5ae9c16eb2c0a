"""``learned``: a transformer that predicts the EMD plan in one forward pass.

After "DeepEMD: A Transformer-based Fast Estimation of the Earth Mover's Distance"
(arXiv 2311.09998): a single-head attention matrix between the two node sets is read
as the matching. Here every node is a token built from what the EMD problem itself
carries, so the layer works behind ``solve(cost, a, b)`` for any M and N:

    token of node i of the first set = [M a_i / mass, min_j cost_ij, mean_j cost_ij,
                                        std_j cost_ij]   (and likewise per column)

Self- and cross-attention layers whose cross-attention logits are biased by
-cost / tau (a learned tau) let each node see its candidates; the final single-head
attention logits L_ij = <q_i, k_j> / sqrt(d) - cost_ij / tau are projected onto the
transport polytope by ``n_sinkhorn`` log-domain Sinkhorn normalisations followed by the
rounding step of Altschuler et al. (2017) (scale down rows and columns that exceed
their marginal, then add the outer product of the residuals), so the plan has the
marginals a and b exactly (to rounding), and value = <plan, cost>. On raw point sets, :func:`learned_emd` builds the Euclidean
cost first.

Training (``scripts/train_learned_emd.py``): cross-entropy between the exact plans of
the ``exact`` solver (rows normalised) and the predicted plans, on generated point
clouds and on DeepEMD patch features of a trained backbone. The checkpoint is small
and loaded once per path.

Differentiation (``gradient``): ``autograd`` (the default of the solver): through the network
and the unrolled Sinkhorn projection, so d value / d cost includes the plan and the
network's dependence on the cost, and a and b receive gradients. ``plan``: the plan is
computed without autograd and d value / d cost = plan, the envelope-theorem form of the
exact solvers' gradient with the predicted plan in place of the optimal one; a and b
receive none.

``sharpness`` k multiplies the logits before the projection (temperature / k). The shipped
point-cloud model was trained at 128 points; on larger clouds the points lie closer together
and its plan is too soft, so its cost lies above the optimum. :func:`learned_emd` (the
point-cloud loss) uses ``POINTCLOUD_OPTIONS``: k = 3 with 100 Sinkhorn normalisations (enough
to converge at that sharpness) and the ``plan`` gradient, which on real ModelNet40 validation
pairs at 1,024 points bring the mean relative error from 12% to 4.5% and the median cosine of
d value / d x with the exact gradient from 0.78 to 0.93 (benchmarks/README.md); the backward
pass also skips the network.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Dict, Optional

import torch
import torch.nn as nn

from ..errors import ConfigError, OptionError
from ._problem import EMDResult
from ._solver import Option, SolverSpec
from ._sinkhorn import _iterate, _LogSumExp

TOKEN_FEATURES = 4


def node_tokens(cost: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Per-row tokens [B, M, 4] of cost [B, M, N] with weights a [B, M] (see the module docstring)."""
    mass = a.sum(-1, keepdim=True)
    return torch.stack([a * a.shape[-1] / mass, cost.min(-1).values, cost.mean(-1),
                        cost.std(-1, unbiased=False) if cost.shape[-1] > 1 else torch.zeros_like(a)], -1)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.norm_other = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, other, bias):
        h = self.norm_self(x)
        x = x + _recomputed(_attend, self.self_attn, h, h)
        x = x + _recomputed(_attend, self.cross_attn, self.norm_cross(x), self.norm_other(other), bias)
        return x + self.mlp(self.norm_mlp(x))


def _recomputed(fn, *args):
    """``fn(*args)``, recomputed in the backward pass instead of keeping its [B, heads, M, N]
    attention weights when autograd records it (``torch.utils.checkpoint``)."""
    if not torch.is_grad_enabled():
        return fn(*args)
    from torch.utils.checkpoint import checkpoint
    return checkpoint(fn, *args, use_reentrant=False)


def _attend(mha: nn.MultiheadAttention, x: torch.Tensor, other: torch.Tensor,
            bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``mha(x, other, other, attn_mask=bias)`` [B, M, dim] for x [B, M, dim], other [B, N, dim] and an
    additive bias [B, M, N] shared by the heads, through ``scaled_dot_product_attention``: the
    bias is broadcast over the heads (no [B * heads, M, N] copy). On the CPU a float bias takes
    the unfused path, which keeps the [B, heads, M, N] weights for backward; :func:`_recomputed`
    is what drops them."""
    B, M, dim = x.shape
    heads = mha.num_heads
    q, k, v = (torch.nn.functional.linear(t, w, c).unflatten(-1, (heads, dim // heads)).transpose(1, 2)
               for t, w, c in zip((x, other, other), mha.in_proj_weight.chunk(3), mha.in_proj_bias.chunk(3)))
    mask = None if bias is None else bias[:, None].to(q.dtype)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return mha.out_proj(out.transpose(1, 2).reshape(B, M, dim))


NORMALIZE = ("max", "range")


class MatchingTransformer(nn.Module):
    """Predicts plan logits [B, M, N] from cost [B, M, N] and weights a [B, M], b [B, N].

    ``normalize``: what the network reads, cost / max |cost| (``max``) or (cost - min) /
    (max - min) (``range``: also blind to a constant added to the cost, which moves no plan;
    DeepEMD's 1 - cos costs of wide features crowd near 1, where ``max`` leaves them a narrow
    band)."""

    def __init__(self, dim: int = 64, layers: int = 2, heads: int = 4, normalize: str = "max"):
        super().__init__()
        if normalize not in NORMALIZE:
            raise ConfigError(f"MatchingTransformer normalize: expected one of {', '.join(NORMALIZE)}, "
                              f"got {normalize!r}")
        self.normalize = normalize
        self.config = {"dim": dim, "layers": layers, "heads": heads, "normalize": normalize}
        self.embed_x = nn.Linear(TOKEN_FEATURES, dim)
        self.embed_y = nn.Linear(TOKEN_FEATURES, dim)
        self.blocks_x = nn.ModuleList(_Block(dim, heads) for _ in range(layers))
        self.blocks_y = nn.ModuleList(_Block(dim, heads) for _ in range(layers))
        self.query, self.key = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.log_tau = nn.Parameter(torch.tensor(math.log(0.05)))

    def forward(self, cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.normalize == "range":                        # the plan ignores a constant added to the cost
            low = cost.amin((1, 2), keepdim=True)
            c = (cost - low) / (cost.amax((1, 2), keepdim=True) - low).clamp_min(1e-12)
        else:                                                # scale-free: EMD is homogeneous in cost
            c = cost / cost.abs().amax((1, 2), keepdim=True).clamp_min(1e-12)
        x = self.embed_x(node_tokens(c, a))
        y = self.embed_y(node_tokens(c.transpose(1, 2), b))
        tau = self.log_tau.exp()
        bias = -c / tau
        for bx, by in zip(self.blocks_x, self.blocks_y):
            x, y = bx(x, y, bias), by(y, x, bias.transpose(1, 2))
        logits = self.query(x) @ self.key(y).transpose(1, 2) / math.sqrt(x.shape[-1])
        return logits - c / tau


def _sinkhorn_step(cost: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, g: torch.Tensor):
    """One log-domain Sinkhorn iteration (epsilon 1) on cost [B, M, N]: (f, g) [B, M], [B, N]."""
    ops = _LogSumExp(cost, 1.0, kernel=False)
    f = log_a - ops.rows(g)
    return f, log_b - ops.cols(f)


def project(logits: torch.Tensor, a: torch.Tensor, b: torch.Tensor, n_iter: int,
            log: bool = False) -> torch.Tensor:
    """Log-domain Sinkhorn normalisation of exp(logits) [B, M, N] to row sums a and column sums b
    (the log of the plan with ``log``).

    Without autograd the iterations run as the ``sinkhorn`` solver's (no early stop). With
    autograd each iteration is recomputed in the backward pass instead of kept
    (``torch.utils.checkpoint``): memory stays a few [B, M, N] tensors whatever ``n_iter``,
    where keeping the unrolled iterations costs ~4 of them per iteration."""
    log_a, log_b = a.clamp_min(1e-30).log(), b.clamp_min(1e-30).log()
    if torch.is_grad_enabled() and (logits.requires_grad or a.requires_grad or b.requires_grad):
        cost, g = -logits, torch.zeros_like(b)            # negated once, not at every iteration
        for _ in range(n_iter):
            f, g = _recomputed(_sinkhorn_step, cost, log_a, log_b, g)
    else:
        f, g, _, _ = _iterate(_LogSumExp(-logits, 1.0, kernel=False), log_a, log_b, torch.zeros_like(a),
                              torch.zeros_like(b), n_iter, tol=0.0, mass=a.sum(1), check_every=n_iter)
    log_plan = logits + f[:, :, None] + g[:, None, :]
    return log_plan if log else log_plan.exp()


def round_to_polytope(plan: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The nearby feasible plan [B, M, N] with row sums a and column sums b (Altschuler et al. 2017)."""
    plan = plan * (a / plan.sum(2).clamp_min(1e-30)).clamp(max=1)[:, :, None]
    plan = plan * (b / plan.sum(1).clamp_min(1e-30)).clamp(max=1)[:, None, :]
    err_a, err_b = (a - plan.sum(2)).clamp_min(0), (b - plan.sum(1)).clamp_min(0)
    missing = err_a.sum(1)                                # = err_b.sum(1) up to rounding
    tiny = torch.finfo(plan.dtype).eps * a.sum(1)
    scale = torch.where(missing > tiny, 1 / missing.clamp_min(1e-30), torch.zeros_like(missing))
    return plan + err_a[:, :, None] * err_b[:, None, :] * scale[:, None, None]


_LOADED: Dict[tuple, MatchingTransformer] = {}


def save_model(model: MatchingTransformer, path: str, info: Optional[dict] = None,
               float16: bool = False) -> None:
    """Write ``model`` (its config, weights and ``info``); ``float16`` halves the file (the
    weights are loaded back into the model's own dtype)."""
    from .._io import save_checkpoint
    state = {k: v.half() if float16 and v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_checkpoint(path, {"config": model.config, "model": state, "info": info or {}})


def load_model(path: str, device: torch.device, dtype: torch.dtype) -> MatchingTransformer:
    """The MatchingTransformer of checkpoint ``path`` (cached per path, device and dtype)."""
    key = (os.path.abspath(path), os.path.getmtime(path) if os.path.exists(path) else 0, str(device), dtype)
    if key not in _LOADED:
        if not os.path.isfile(path):
            raise ConfigError(f"learned EMD solver: checkpoint {path!r} does not exist "
                              f"(train one with scripts/train_learned_emd.py)")
        from .._io import load_checkpoint
        state = load_checkpoint(path)
        if "config" not in state or "model" not in state:
            raise ConfigError(f"learned EMD solver: {path!r} is not a learned-EMD checkpoint")
        model = MatchingTransformer(**state["config"])
        model.load_state_dict(state["model"])
        _LOADED[key] = model.to(device=device, dtype=dtype).eval()
    return _LOADED[key]


_HERE = os.path.dirname(os.path.abspath(__file__))
SHIPPED_MODELS = {
    # name: (file in the package, what it was trained on)
    "cosine": ("learned_default.pt", "generated 25-node problems: point clouds, 1 - cos at widths 64 and 640 with uniform, "
               "random and cross-reference weights (train_learned_emd.py --problems robust)"),
    "pointclouds": ("learned_pointclouds.pt", "pairs of real ModelNet40 clouds (30 classes), 128 points"),
}
DEFAULT_MODEL = os.path.join(_HERE, SHIPPED_MODELS["cosine"][0])


def model_path(checkpoint: str, default: str = "cosine") -> str:
    """The file of ``checkpoint``: a shipped model's name (``SHIPPED_MODELS``), a path, or
    empty for the shipped ``default``."""
    name = checkpoint or default
    return os.path.join(_HERE, SHIPPED_MODELS[name][0]) if name in SHIPPED_MODELS else name


GRADIENTS = ("autograd", "plan")
# learned_emd's defaults (the point-cloud loss); chosen on 16 validation pairs of real ModelNet40
# clouds at 256 and 1,024 points (benchmarks/README.md): a sharper plan, projected to convergence,
# and the plan's gradient
POINTCLOUD_OPTIONS = {"gradient": "plan", "sharpness": 3.0, "n_sinkhorn": 100}


def solve_learned(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, checkpoint: str = "",
                  model: Optional[MatchingTransformer] = None, n_sinkhorn: int = 30,
                  gradient: str = "autograd", sharpness: float = 1.0) -> EMDResult:
    """Learned EMD of cost [B, M, N], a [B, M], b [B, N] from the transformer at ``checkpoint``
    (a path or the name of a shipped model, ``SHIPPED_MODELS``; or an in-memory ``model``;
    neither: the shipped ``cosine`` model, made for DeepEMD's problems); ``gradient``:
    ``autograd`` or ``plan``; ``sharpness``: the logits' factor before the projection
    (see the module docstring)."""
    if model is None:
        model = load_model(model_path(checkpoint), cost.device, cost.dtype)
    with torch.no_grad() if gradient == "plan" else contextlib.nullcontext():
        plan = round_to_polytope(project(model(cost, a, b) * sharpness, a, b, n_sinkhorn), a, b)
    marginal = ((plan.sum(2) - a).abs().sum(1) + (plan.sum(1) - b).abs().sum(1)) / a.sum(1)
    return EMDResult(plan=plan, value=(plan * cost).sum((1, 2)), solver="learned",
                     info={"marginal_error": marginal.detach(), "n_sinkhorn": n_sinkhorn, "gradient": gradient})


def learned_emd(x: torch.Tensor, y: torch.Tensor, a: Optional[torch.Tensor] = None,
                b: Optional[torch.Tensor] = None, **options) -> EMDResult:
    """Learned EMD between point sets x [B, M, D] and y [B, N, D] (uniform weights by default)
    under the Euclidean cost; a fast, differentiable estimate for use as a loss. ``options``
    are the ``learned`` solver's, checked as :func:`~fewshot.emd.solve` checks them; the
    defaults here: the shipped ``pointclouds`` model (without a ``checkpoint`` or ``model``)
    and ``POINTCLOUD_OPTIONS`` (see the module docstring)."""
    from . import solve
    B, M, N = x.shape[0], x.shape[1], y.shape[1]
    if a is None:
        a = torch.full((B, M), 1.0 / M, device=x.device, dtype=x.dtype)
    if b is None:
        b = torch.full((B, N), 1.0 / N, device=x.device, dtype=x.dtype) * (a.sum(1, keepdim=True))
    return solve(torch.cdist(x, y), a, b, solver="learned", **pointcloud_options(options))


def pointcloud_options(options: dict) -> dict:
    """The ``learned`` solver's options for point clouds (what :func:`learned_emd` solves with):
    ``options`` over ``POINTCLOUD_OPTIONS``, the shipped ``pointclouds`` model unless a
    ``checkpoint`` or ``model`` is given."""
    options = {**POINTCLOUD_OPTIONS, **options}
    if not options.get("checkpoint") and options.get("model") is None:
        options["checkpoint"] = "pointclouds"
    return options


# ----------------------------------------------------------------------------- training

def random_problems(batch: int, n: int, generator: torch.Generator, kind: str = "mixed",
                    dtype: torch.dtype = torch.float32, width: int = 64, weights: str = "random"):
    """Training/test problems (cost [B, n, n], a, b): ``points`` (Euclidean cost of 2-D/3-D
    Gaussian clouds, one shifted and scaled), ``cosine`` (1 - cos of ``width``-d vectors,
    DeepEMD-like) or ``mixed`` (half each). Weights with mass n: ``random`` (positive) or
    ``uniform``."""
    def cloud_cost(B):
        d = 2 + int(torch.randint(0, 2, (1,), generator=generator))
        x = torch.randn(B, n, d, generator=generator)
        y = torch.randn(B, n, d, generator=generator) * (0.5 + torch.rand(B, 1, 1, generator=generator)) \
            + torch.randn(B, 1, d, generator=generator)
        return torch.cdist(x, y)

    def cosine_cost(B):
        x = torch.nn.functional.normalize(torch.randn(B, n, width, generator=generator), dim=-1)
        y = torch.nn.functional.normalize(torch.randn(B, n, width, generator=generator)
                                          + 0.5 * x[torch.randperm(B, generator=generator)], dim=-1)
        return 1 - x @ y.transpose(1, 2)

    if kind == "points":
        cost = cloud_cost(batch)
    elif kind == "cosine":
        cost = cosine_cost(batch)
    elif kind == "mixed":
        cost = torch.cat([cloud_cost(batch // 2), cosine_cost(batch - batch // 2)])
    else:
        raise ValueError(f"kind must be points, cosine or mixed, got {kind!r}")
    if weights not in ("random", "uniform"):
        raise ValueError(f"weights must be random or uniform, got {weights!r}")
    a = torch.rand(batch, n, generator=generator, dtype=torch.float64) + 0.1
    b = torch.rand(batch, n, generator=generator, dtype=torch.float64) + 0.1
    if weights == "uniform":
        a, b = torch.ones_like(a), torch.ones_like(b)
    a, b = a * n / a.sum(1, keepdim=True), b * n / b.sum(1, keepdim=True)
    return cost.to(dtype), a.to(dtype), b.to(dtype)


def plan_loss(model: MatchingTransformer, cost, a, b, target_plan, n_sinkhorn: int = 30) -> torch.Tensor:
    """Cross-entropy of the predicted rows against the exact plan's rows (each row normalised)."""
    log_plan = project(model(cost, a, b), a, b, n_sinkhorn, log=True)
    log_rows = log_plan - a.clamp_min(1e-30).log()[:, :, None]
    return -(target_plan * log_rows).sum((1, 2)).div(a.sum(1)).mean()


def train_matcher(model: MatchingTransformer, steps: int, batch: int, n: int, seed: int = 0,
                  lr: float = 1e-3, kind: str = "mixed", problems=None, log_every: int = 0) -> list:
    """Fit ``model`` to exact plans of generated problems (``problems(batch, generator)`` may
    supply others, e.g. DeepEMD patch costs). Returns the loss history."""
    from . import solve
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    history = []
    model.train()
    for step in range(steps):
        cost, a, b = problems(batch, g) if problems else random_problems(batch, n, g, kind)
        target = solve(cost.double(), a.double(), b.double(), solver="exact").plan.to(cost.dtype)
        loss = plan_loss(model, cost, a, b, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}: loss {sum(history[-log_every:]) / log_every:.4f}", flush=True)
    model.eval()
    return history


def _check_options(options: dict, where: str) -> None:
    path = model_path(options["checkpoint"]) if options["checkpoint"] else ""
    if options["model"] is not None:
        if not isinstance(options["model"], MatchingTransformer):
            raise OptionError(f"{where}.model", f"expected a MatchingTransformer, "
                                                f"got {type(options['model']).__name__}")
        if path:
            raise OptionError(where, "give checkpoint or model, not both")
    elif path and not os.path.isfile(path):
        raise OptionError(f"{where}.checkpoint", f"{path!r} does not exist (expected a shipped model, "
                          f"{' or '.join(SHIPPED_MODELS)}, or a file from scripts/train_learned_emd.py)")


SPEC = SolverSpec(
    solve_learned,
    {"checkpoint": Option("", str), "model": Option(None, object), "n_sinkhorn": Option(30, int, low=1),
     "gradient": Option("autograd", str, choices=GRADIENTS), "sharpness": Option(1.0, float, low=0, low_open=True)},
    differentiation="gradient='autograd': through the network and the unrolled Sinkhorn projection; "
                    "'plan': d value / d cost = the predicted plan (a, b get none)",
    check=_check_options)
