"""DeepEMD (Zhang et al., CVPR 2020; TPAMI extension).

Each image becomes a set of node features (FCN: the dense feature map's H*W
vectors, optionally with pooled pyramid levels; Grid: one pooled vector per crop of
an image pyramid; Sampling: one per random-resized crop). For a query q and a
prototype p (the support image for 1-shot, a Structured FC prototype for K > 1):

  * cross-reference weights: a_i = max(0, <u_i, mean_j v_j>) + 1e-3 for q's node u_i,
    b_j likewise for p's nodes, each normalised to total mass M (the node count);
  * cost_ij = 1 - cos(u_i, v_j) of channel-centred features (or the squared l2
    distance, metric "l2"), similarity s_ij = 1 - cost_ij;
  * plan = the EMD flow between (a, cost, b), from the configured solver;
  * logit = temperature / M * sum_ij plan_ij * s_ij = temperature * (1 - value / M),
    since sum(plan) = M. Written through ``value``, gradients reach the features
    through the cost and the weights through a and b for every solver.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import emd
from . import _sfc_kernel
from ..errors import ConfigError, OptionError
from .backbones import Backbone
from .classifier import METHODS, FewShotClassifier, class_means

PATCHES = ("fcn", "grid", "sampling")
METRICS = ("cosine", "l2")


WEIGHT_FLOOR = 1e-3   # the cross-reference weights' floor: every node keeps some mass


def node_weights(z: torch.Tensor, total: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """DeepEMD's node weights from their arguments z [..., M] (z_i = <u_i, mean_j v_j>):
    w_i = relu(z_i) + 1e-3, normalised to sum ``total``. Returns the weights [..., M] and
    the sum before normalisation [..., 1] (the closed-form SFC gradient needs it). The one
    definition of the weights: every path (autograd, Structured FC, pictures) comes here."""
    w = F.relu(z) + WEIGHT_FLOOR
    s = w.sum(-1, keepdim=True)
    return w * (total / s), s


def deepemd_logits(value: torch.Tensor, n_nodes: int, temperature: float) -> torch.Tensor:
    """DeepEMD's logit from the EMD value of a problem of total mass ``n_nodes`` (M):
    temperature / M * sum_ij plan_ij (1 - cost_ij) = temperature * (1 - value / M)."""
    return temperature * (1 - value / n_nodes)


def cross_reference_weights(x: torch.Tensor, y: torch.Tensor, total: Optional[float] = None) -> torch.Tensor:
    """Weights of x's nodes given y: x [..., P, C, M], y [..., Q, C, N] -> [..., P, Q, M],
    w[p, q, i] = relu(<x[p, :, i], mean_j y[q, :, j]>) + 1e-3, normalised to sum ``total``
    (default: M, the node count) over i (leading dims: episodes); see :func:`node_weights`."""
    return node_weights(_weight_arguments(x, y), x.shape[-1] if total is None else total)[0]


def _weight_arguments(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z[..., p, q, i] = <x[p, :, i], mean_j y[q, :, j]> of x [..., P, C, M], y [..., Q, C, N]."""
    return torch.einsum("...pcm,...qc->...pqm", x, y.mean(-1))


def node_cost(query: torch.Tensor, proto: torch.Tensor, metric: str = "cosine",
              center: bool = True) -> torch.Tensor:
    """Cost between nodes: query [..., Q, C, M], proto [..., W, C, N] -> [..., Q, W, M, N].

    ``cosine``: 1 - cos(u_i, v_j); ``l2``: |u_i - v_j|^2. With ``center`` each node's
    channels are centred (the mean over channels subtracted) first, as in DeepEMD."""
    if center:
        query = query - query.mean(-2, keepdim=True)
        proto = proto - proto.mean(-2, keepdim=True)
    if metric == "cosine":
        qn = F.normalize(query, dim=-2)
        pn = F.normalize(proto, dim=-2)
        return 1 - torch.einsum("...qcm,...wcn->...qwmn", qn, pn)
    if metric == "l2":
        u, v = query.transpose(-1, -2), proto.transpose(-1, -2)          # [..., Q, M, C], [..., W, N, C]
        d = u[..., :, None, :, None, :] - v[..., None, :, None, :, :]
        return d.pow(2).sum(-1)
    raise ConfigError(f"DeepEMD metric must be one of {METRICS}, got {metric!r}")


def emd_problem(query: torch.Tensor, proto: torch.Tensor, metric: str = "cosine",
                center: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeepEMD's transport problems between query nodes [..., Q, C, M] and prototype nodes
    [..., W, C, N]: cost [..., Q, W, M, N], cross-reference weights a [..., Q, W, M] and
    b [..., Q, W, N], each normalised to total mass M (leading dims: episodes)."""
    M = query.shape[-1]
    a = cross_reference_weights(query, proto, M)                                  # [..., Q, W, M]
    # b normalised after the transpose: a sum's rounding depends on the layout it reads
    b = node_weights(_weight_arguments(proto, query).transpose(-3, -2), M)[0]     # [..., Q, W, N]
    return node_cost(query, proto, metric, center), a, b


def random_emd_problems(batch: int, n: int, width: int, generator: torch.Generator
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeepEMD problems (:func:`emd_problem`: cost [batch, n, n], a, b) between random
    non-negative node features [width, n] of two images, which share an image-level component
    half of the time (as two images of one class): what a learned EMD solver is trained and
    tested on besides real node sets."""
    base = torch.randn(batch, width, 1, generator=generator)
    same = (torch.rand(batch, 1, 1, generator=generator) < 0.5).float()
    other = same * base + (1 - same) * torch.randn(batch, width, 1, generator=generator)
    x = torch.relu(base + torch.randn(batch, width, n, generator=generator))
    y = torch.relu(other + torch.randn(batch, width, n, generator=generator))
    cost, a, b = emd_problem(x[:, None], y[:, None])
    return cost[:, 0, 0], a[:, 0, 0], b[:, 0, 0]


def emd_logits(query: torch.Tensor, proto: torch.Tensor, solver: Union[str, emd.Solver] = "exact",
               solver_options: Optional[dict] = None, temperature: float = 12.5,
               metric: str = "cosine", center: bool = True,
               init: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
               return_result: bool = False
               ) -> Union[torch.Tensor, Tuple[torch.Tensor, emd.EMDResult]]:
    """DeepEMD logits [..., Q, W] of query nodes [..., Q, C, M] against prototype nodes
    [..., W, C, N] (leading dims: episodes, all solved in one call).

    ``solver``: a built :class:`fewshot.emd.Solver`, or a name with ``solver_options``.
    ``init``: the solver's warm start for the problems (a previous result's
    ``info["warm_start"]``, per problem in the order of the logits; ``Solver.warm_starts``).
    With ``return_result`` the solver's EMDResult over the problems (flattened in the order
    of the logits) is returned too."""
    if not isinstance(solver, emd.Solver):
        solver = emd.make_solver(solver, solver_options)
    elif solver_options:
        raise ConfigError("emd_logits: solver_options given with a built solver")
    M, N = query.shape[-1], proto.shape[-1]
    cost, a, b = emd_problem(query, proto, metric, center)
    shape = cost.shape[:-2]                                          # [..., Q, W]
    x = y = None
    if solver.needs_points:                                         # e.g. chain: node features
        x = query.transpose(-1, -2).unsqueeze(-3).expand(*shape, M, -1).reshape(-1, M, query.shape[-2])
        y = proto.transpose(-1, -2).unsqueeze(-4).expand(*shape, N, -1).reshape(-1, N, proto.shape[-2])
    if init is not None:
        init = (init[0].reshape(-1, M), init[1].reshape(-1, N))
    result = solver(cost.reshape(-1, M, N), a.reshape(-1, M), b.reshape(-1, N), x=x, y=y, init=init)
    logits = deepemd_logits(result.value, M, temperature).reshape(shape)
    return (logits, result) if return_result else logits


class EMDHead(nn.Module):
    """The EMD layer of DeepEMD: cross-reference weights, node cost, the solver, the logits.

    Holds two built solvers: ``train_solver`` (used in training mode) and ``eval_solver``
    (in evaluation mode); ``solver`` is the one of the current mode."""

    def __init__(self, train_solver: emd.Solver, eval_solver: emd.Solver, temperature: float = 12.5,
                 metric: str = "cosine", center: bool = True):
        super().__init__()
        if metric not in METRICS:
            raise OptionError("metric", f"expected one of {', '.join(METRICS)}, got {metric!r}")
        temperature = emd.Option(12.5, float, low=0, low_open=True).check(
            temperature, "temperature")
        center = emd.Option(True, bool).check(center, "center")
        self.train_solver, self.eval_solver = train_solver, eval_solver
        self.temperature, self.metric, self.center = temperature, metric, center

    @property
    def solver(self) -> emd.Solver:
        return self.train_solver if self.training else self.eval_solver

    def forward(self, query: torch.Tensor, proto: torch.Tensor,
                init: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, return_result: bool = False):
        """Logits [..., Q, W] of query nodes [..., Q, C, M] against prototype nodes
        [..., W, C, N] (see :func:`emd_logits`)."""
        return emd_logits(query, proto, self.solver, None, self.temperature, self.metric, self.center,
                          init=init, return_result=return_result)


_SFC_OPTIONS = {
    "steps": emd.Option(100, int, low=1), "batch": emd.Option(4, int, low=1),
    "lr": emd.Option(0.1, float, low=0, low_open=True), "momentum": emd.Option(0.9, float, low=0, high=1),
    "dampening": emd.Option(0.9, float, low=0, high=1), "weight_decay": emd.Option(0.0, float, low=0),
    "seed": emd.Option(0, int, low=0), "warm_start": emd.Option(True, bool),
    "gradient": emd.Option("closed_form", str, choices=("closed_form", "autograd"))}


@dataclass(frozen=True)
class StructuredFC:
    """Structured FC fitting for K > 1 shots: ``steps`` epochs of SGD (``lr``, ``momentum``,
    ``dampening``, ``weight_decay``) in batches of ``batch`` support images, shuffled by
    ``seed`` (the same for every episode, so an episode's result does not depend on which
    episodes ran before it); ``warm_start``: start each support image's EMD problems from
    where its previous step ended (sinkhorn: potentials; exact: optimal bases);
    ``gradient``: ``closed_form`` (where the solver's gradient is the envelope theorem's and
    the cost is cosine: :func:`sfc_gradient`, no autograd graph) or ``autograd``;
    ``compiled``: the closed form's step by the compiled CPU kernels (:mod:`._sfc_kernel`) or
    by batched torch operations (False; what other devices run); None: the kernels on the CPU."""
    steps: int = 100
    batch: int = 4
    lr: float = 0.1
    momentum: float = 0.9
    dampening: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    warm_start: bool = True
    gradient: str = "closed_form"
    compiled: Optional[bool] = None

    def __post_init__(self):
        for key, opt in _SFC_OPTIONS.items():
            object.__setattr__(self, key, opt.check(getattr(self, key), f"sfc_{key}"))
        if self.compiled not in (None, True, False):
            raise ConfigError(f"StructuredFC.compiled: expected None, True or False, got {self.compiled!r}")

    def gradient_path(self, head: EMDHead) -> str:
        """How :meth:`fit_many` differentiates for ``head``: ``"closed_form"`` where asked
        (``gradient``), the solver's gradient is the envelope theorem's
        (``SolverSpec.envelope``, plug-ins declare it too) and the cost is cosine; else
        ``"autograd"``."""
        if self.gradient == "closed_form" and head.solver.envelope and head.metric == "cosine":
            return "closed_form"
        return "autograd"

    def fit(self, head: EMDHead, support: torch.Tensor, labels: torch.Tensor,
            stats: Optional[Dict[str, int]] = None) -> torch.Tensor:
        """Prototypes [n_way, C, n_nodes] fitted to support [n, C, n_nodes] with labels [n]:
        :meth:`fit_many` of one episode."""
        return self.fit_many(head, support[None], labels[None], stats)[0]

    def fit_many(self, head: EMDHead, support: torch.Tensor, labels: torch.Tensor,
                 stats: Optional[Dict[str, int]] = None) -> torch.Tensor:
        """Prototypes [E, n_way, C, n_nodes] of E episodes fitted in lockstep to support
        [E, n, C, n_nodes] with labels [E, n] (each episode's n_way classes 0..n_way-1).

        Initialised from the class means, then SGD on the cross-entropy of the support
        images' DeepEMD logits against the prototypes (gradient through the EMD layer);
        the features are held fixed. Every episode sees the same shuffling (``seed``) and
        its own prototypes and momentum; one solver call per step covers all episodes, so
        an episode's prototypes are those of fitting it alone (to rounding). With
        ``warm_start`` and a solver that warm-starts, each support image's problems start
        from the state (``info["warm_start"]``) its previous step ended in: the prototypes
        move little per step, so the last step's potentials (sinkhorn) or optimal bases
        (exact) are near-optimal starts. Where the solver's gradient is the envelope
        theorem's and the cost is cosine (``exact``), the gradient is taken in closed form
        (:func:`sfc_gradient`), without autograd, and ``torch.optim.SGD``'s update applied
        from its factors (on the CPU by a compiled kernel that reads the plans sparsely). ``stats``, if given, accumulates ``solves`` (solver calls),
        ``problems`` (EMD problems solved), ``iterations`` (sinkhorn, per call) and
        ``pivots`` (exact, summed over problems)."""
        feats = support.detach()
        E, n = labels.shape
        means = torch.stack([class_means(f, l) for f, l in zip(feats, labels)])   # [E, W, C, N]
        W = means.shape[1]
        warm = self.warm_start and head.solver.warm_starts
        starts = None       # per (episode, support image, class): the last solve's warm start
        gen = torch.Generator().manual_seed(self.seed)
        closed_form = self.gradient_path(head) == "closed_form"
        if closed_form:
            nodes = _SupportNodes.of(feats, head.center)
            proto = _Prototypes(means.transpose(-1, -2), head.center, self.lr, self.momentum,
                                self.dampening, self.weight_decay, self.compiled)   # node-major [E, W, N, C]
        else:
            proto = nn.Parameter(means)
            opt = torch.optim.SGD([proto], lr=self.lr, momentum=self.momentum,
                                  dampening=self.dampening, weight_decay=self.weight_decay)
        for _ in range(self.steps):
            for chunk in torch.randperm(n, generator=gen).to(feats.device).split(self.batch):
                init = None
                if starts is not None:
                    init = tuple(t.index_select(1, chunk.to(t.device)).reshape(-1, *t.shape[3:]) for t in starts)
                if closed_form:                 # no autograd graph: the gradient by hand
                    with torch.no_grad():
                        grad, result = _sfc_terms(head, nodes.select(chunk), proto.nodes, proto.mean,
                                                  labels[:, chunk], init, proto.norm, self.compiled)
                        proto.step(grad)
                else:
                    opt.zero_grad()
                    with torch.enable_grad():
                        logits, result = head(feats[:, chunk], proto, init=init, return_result=True)
                        # the sum over episodes of each episode's mean cross-entropy over the chunk
                        F.cross_entropy(logits.reshape(-1, W), labels[:, chunk].reshape(-1),
                                        reduction="sum").div(len(chunk)).backward()
                    opt.step()
                if warm:
                    # zeros for the images not solved yet: sinkhorn starts cold from zero
                    # potentials, exact from its own start (zeros are not a basis)
                    state = result.info["warm_start"]
                    if starts is None:
                        starts = tuple(t.new_zeros((E, n, W) + tuple(t.shape[1:])) for t in state)
                    for buffer, t in zip(starts, state):
                        buffer.index_copy_(1, chunk.to(buffer.device), t.reshape(E, len(chunk), W, *t.shape[1:]))
                if stats is not None:
                    stats["solves"] = stats.get("solves", 0) + 1
                    stats["problems"] = stats.get("problems", 0) + E * len(chunk) * W
                    for k in ("iterations", "pivots"):
                        if k in result.info:
                            stats[k] = stats.get(k, 0) + int(torch.as_tensor(result.info[k]).sum())
        return proto.value().transpose(-1, -2).contiguous() if closed_form else proto.detach()


@dataclass(frozen=True)
class _SupportNodes:
    """Support features in the closed form's layout: node-major unit nodes ``xhat``
    [E, n, M, C] (centred first with ``center``) with their norms ``nu`` [E, n, M], channel
    means ``mu`` [E, n, M] (zero without ``center``) and ``xsum`` [E, n, C] = sum_i nu_i
    xhat_i, so that x_i = nu_i xhat_i + mu_i (a vector of ones)."""
    xhat: torch.Tensor
    nu: torch.Tensor
    mu: torch.Tensor
    xsum: torch.Tensor

    @staticmethod
    def of(support: torch.Tensor, center: bool) -> "_SupportNodes":
        """The nodes of support [E, n, C, M]."""
        x = support.transpose(-1, -2).contiguous()                    # [E, n, M, C]
        mu = x.mean(-1) if center else x.new_zeros(x.shape[:-1])
        xt = x - mu[..., None] if center else x
        nu = xt.norm(dim=-1).clamp_min(1e-12)                         # as F.normalize
        return _SupportNodes(xt / nu[..., None], nu, mu, xt.sum(2))

    def select(self, chunk: torch.Tensor) -> "_SupportNodes":
        """The support images ``chunk`` [k] of every episode (contiguous copies)."""
        return _SupportNodes(*(t.index_select(1, chunk) for t in (self.xhat, self.nu, self.mu, self.xsum)))


def _compiled(t: torch.Tensor, compiled: Optional[bool] = None) -> bool:
    """Whether the Structured FC step runs the compiled kernels (:mod:`._sfc_kernel`) for
    tensors like ``t``: ``compiled`` if given (True needs CPU tensors), else on the CPU;
    elsewhere as batched torch operations."""
    if compiled is None:
        return t.device.type == "cpu"
    if compiled and t.device.type != "cpu":
        raise ConfigError(f"StructuredFC.compiled=True runs on the CPU; the features are on {t.device}")
    return compiled


@dataclass(frozen=True)
class _Gradient:
    """The Structured FC gradient of node-major prototypes P [E, W, N, C] for a chunk of k
    support images per episode (``nodes``, selected), in factors:

        grad_wj = sum_k,i (weight_kw inv_norm_wj plan_kwij + ga_kwi) xhat_ki
                  + sum_k gb_kwj xsum_k + scale_wj P_wj + ones_wj (a vector of ones),
        scale_wj = -inv_norm_wj^2 sum_k,i weight_kw plan_kwij (1 - cost_kwij)

    plan and cost [E, k, W, M, N], weight [E, k, W], inv_norm [E, W, N], ga [E, k, W, M],
    gb [E, k, W, N], ones [E, W, N] (None without channel centring, where P is not split
    into centred nodes and means). See :func:`sfc_gradient`."""
    nodes: _SupportNodes
    plan: torch.Tensor
    cost: torch.Tensor
    weight: torch.Tensor
    inv_norm: torch.Tensor
    ga: torch.Tensor
    gb: torch.Tensor
    ones: Optional[torch.Tensor]

    def scale(self) -> torch.Tensor:
        """scale [E, W, N]."""
        rho = (self.weight[..., None, None] * self.plan * (1 - self.cost)).sum((1, 3))
        return -rho * self.inv_norm ** 2

    def dense(self, proto: torch.Tensor) -> torch.Tensor:
        """The gradient [E, W, N, C] of the prototypes' nodes ``proto`` [E, W, N, C] (centred
        where ``ones`` is given; the multiple of ones is not included), as batched products."""
        E, k, W, M, N = self.plan.shape
        C = proto.shape[-1]
        coeffs = (self.weight[..., None, None] * self.plan).permute(0, 2, 4, 1, 3) \
            * self.inv_norm[..., None, None] + self.ga.permute(0, 2, 1, 3)[:, :, None]   # [E, W, N, k, M]
        grad = torch.bmm(self.gb.permute(0, 2, 3, 1).reshape(E, W * N, k), self.nodes.xsum)
        grad.baddbmm_(coeffs.reshape(E, W * N, k * M), self.nodes.xhat.reshape(E, k * M, C))
        return grad.reshape(E, W, N, C) + self.scale()[..., None] * proto


class _Prototypes:
    """Node-major prototypes P [E, W, N, C] as SGD moves them, kept as ``nodes`` and, with
    ``center``, their channel means apart: P = nodes + mean (``mean`` [E, W, N], ``nodes``
    centred), so that the centred norm the cosine cost needs is a plain norm. ``step``
    applies ``torch.optim.SGD``'s update (momentum, dampening, weight decay; no Nesterov) in
    place for a :class:`_Gradient`: on the CPU by the compiled kernel
    (:func:`._sfc_kernel.sgd_step`, the gradient never formed), elsewhere from
    :meth:`_Gradient.dense`."""

    def __init__(self, proto: torch.Tensor, center: bool, lr: float, momentum: float,
                 dampening: float, weight_decay: float, compiled: Optional[bool] = None):
        proto = proto.contiguous()
        self.compiled = compiled
        self.mean = proto.mean(-1) if center else None
        self.nodes = (proto - self.mean[..., None]) if center else proto.clone()
        self.lr, self.momentum, self.dampening, self.weight_decay = lr, momentum, dampening, weight_decay
        self.buf = self.buf_mean = None
        self.norm = None           # |nodes| [E, W, N] where the last step computed it

    def step(self, grad: _Gradient) -> None:
        first = self.buf is None or self.momentum == 0                # buf = d_p, else
        alpha = 1.0 if first else 1 - self.dampening                  # buf = m buf + (1 - d) d_p
        if _compiled(self.nodes, self.compiled):
            if self.buf is None:
                self.buf = torch.empty_like(self.nodes)
                self.norm = self.nodes.new_empty(self.nodes.shape[:-1])
            dtype = self.nodes.numpy().dtype.type
            _sfc_kernel.sgd_step(                                      # in place: nodes, buf, norm
                self.nodes.numpy(), self.buf.numpy(), self.norm.numpy(),
                *(t.contiguous().numpy() for t in (grad.nodes.xhat, grad.nodes.xsum, grad.plan, grad.cost,
                                                   grad.weight, grad.inv_norm, grad.ga, grad.gb)),
                *(dtype(v) for v in (self.weight_decay, self.momentum, alpha, self.lr)), first)
        else:
            d_p = grad.dense(self.nodes).add_(self.nodes, alpha=self.weight_decay)   # grad + wd * p
            self.buf = d_p if first else self.buf.mul_(self.momentum).add_(d_p, alpha=alpha)
            self.nodes.add_(self.buf, alpha=-self.lr)
        if self.mean is not None:
            ones = grad.ones + self.weight_decay * self.mean
            self.buf_mean = ones if first else self.momentum * self.buf_mean + alpha * ones
            self.mean -= self.lr * self.buf_mean

    def value(self) -> torch.Tensor:
        """P [E, W, N, C]."""
        return self.nodes + self.mean[..., None] if self.mean is not None else self.nodes


def _sfc_terms(head: EMDHead, nodes: _SupportNodes, proto: torch.Tensor, mean: Optional[torch.Tensor],
               labels: torch.Tensor, init=None, norm: Optional[torch.Tensor] = None,
               compiled: Optional[bool] = None) -> Tuple[_Gradient, emd.EMDResult]:
    """The Structured FC gradient (:class:`_Gradient`) for support ``nodes`` (k images per
    episode) and node-major prototypes P = proto + mean (proto [E, W, N, C], centred when
    ``mean`` [E, W, N] is given for the centred cosine cost; else P = proto; ``norm``
    [E, W, N]: |proto| if known) with labels [E, k], and the solver's result; see
    :func:`sfc_gradient` for the derivation.

    With x_i = nu_i xhat_i + mu_i 1 every term is a small tensor but the product
    xhat @ proto^T (costs and cross-reference weights)."""
    E, W, N, C = proto.shape
    k, M = nodes.xhat.shape[1], nodes.xhat.shape[2]
    T = head.temperature
    flat = proto.reshape(E, W * N, C)
    dot = (nodes.xhat.reshape(E, k * M, C) @ flat.transpose(1, 2)).reshape(E, k, M, W, N)
    if norm is None:
        norm = flat.norm(dim=-1).clamp_min(1e-12).reshape(E, W, N)      # |proto_j|
    # <x_i, P_j> = nu_i <xhat_i, proto_j> + C mu_i mean_j (xhat_i and proto_j centred)
    cmean = C * mean if mean is not None else norm.new_zeros(E, W, N)
    if _compiled(dot, compiled):
        cost, z_a, z_b = dot.new_empty(E, k, W, M, N), dot.new_empty(E, k, W, M), dot.new_empty(E, k, W, N)
        _sfc_kernel.problems(*(t.contiguous().numpy() for t in (dot, norm, nodes.nu, nodes.mu, cmean)),
                             cost.numpy(), z_a.numpy(), z_b.numpy())        # filled in place
    else:
        cost = 1 - (dot / norm[:, None, None]).transpose(2, 3)          # [E, k, W, M, N]
        xp = nodes.nu[..., None, None] * dot + nodes.mu[..., None, None] * cmean[:, None, None]
        z_a, z_b = xp.mean(-1).transpose(2, 3), xp.mean(2)              # [E, k, W, M], [E, k, W, N]
    (a, s_a), (b, s_b) = node_weights(z_a, M), node_weights(z_b, M)
    result = head.solver(cost.reshape(-1, M, N), a.reshape(-1, M), b.reshape(-1, N), init=init)
    f, g = (p.reshape(E, k, W, -1) for p in result.potentials)
    logits = deepemd_logits(result.value.reshape(E, k, W), M, T)
    gamma = -T / M * (logits.softmax(-1) - F.one_hot(labels, W).to(logits.dtype)) / k   # [E, k, W]
    g_a = gamma[..., None] * (M / s_a) * (f - (f * a).sum(-1, keepdim=True) / M) * (z_a > 0)
    g_b = gamma[..., None] * (M / s_b) * (g - (g * b).sum(-1, keepdim=True) / M) * (z_b > 0)
    ones = None
    if mean is not None:          # the mu_i parts of a's and b's terms
        ones = ((g_a * nodes.mu[:, :, None]).sum((1, 3))[..., None] / N
                + (g_b * nodes.mu.mean(-1)[:, :, None, None]).sum(1))
    # the cost term h_j / n_j; a's (onto the mean node) and b's (onto each node) terms
    grad = _Gradient(nodes, result.plan.reshape(E, k, W, M, N), cost.reshape(E, k, W, M, N), -gamma,
                     1 / norm, g_a * nodes.nu[:, :, None] / N, g_b / M, ones)
    return grad, result


@torch.no_grad()
def sfc_gradient(head: EMDHead, support: torch.Tensor, proto: torch.Tensor, labels: torch.Tensor,
                 init=None, compiled: Optional[bool] = None) -> Tuple[torch.Tensor, emd.EMDResult]:
    """Gradient [E, W, C, N] of the Structured FC loss (the sum over episodes of the mean
    cross-entropy of the support logits) with respect to the prototypes proto [E, W, C, N],
    for support [E, k, C, M] with labels [E, k], in closed form, and the solver's result.

    For a solver whose gradient is the envelope theorem's (``Solver.envelope``: d value /
    d cost = plan, d value / d (a, b) = the potentials f, g) and the cosine cost, with
    gamma = d loss / d value = -temperature / M * (softmax - onehot) / k:

    * cost: d loss / d phat_w = h_w = -sum_k gamma_kw xhat_k plan_kw, through the
      normalisation (h - phat <phat, h>) / |ptilde|, where <phat_j, h_j> = -sum gamma plan_ij
      (1 - cost_ij); the channel centring leaves it unchanged (h and phat are centred);
    * a = M atilde / sum(atilde), atilde_i = relu(<x_i, mean_j P_j>) + 1e-3: d loss / d atilde
      = gamma M / sum(atilde) (f - <f, a> / M), times the relu's step, onto mean_j P_j;
    * b likewise with g, onto each prototype node through <P_j, mean_i x_i>.

    Writing x_i = |xtilde_i| xhat_i + mean_c(x_i) (a vector of ones), the gradient is a
    combination of the support's unit nodes and ones plus a multiple of each prototype node
    (:class:`_Gradient`), which is how :meth:`StructuredFC.fit_many` applies it (the SGD step
    taken from these factors). The same numbers as autograd through :func:`emd_logits`
    (``tests/test_deepemd.py``), without building a graph. ``init``: the solver's warm start."""
    p = proto.transpose(-1, -2)                                      # node-major [E, W, N, C]
    mean = p.mean(-1) if head.center else None
    p = (p - mean[..., None] if head.center else p).contiguous()
    grad, result = _sfc_terms(head, _SupportNodes.of(support, head.center), p, mean, labels, init,
                              compiled=compiled)
    dense = grad.dense(p)
    if grad.ones is not None:
        dense += grad.ones[..., None]
    return dense.transpose(-1, -2), result


@dataclass(frozen=True)
class Nodes:
    """How an image becomes DeepEMD nodes.

    patch: ``fcn`` (the feature map's cells) | ``grid`` | ``sampling``.
    pyramid: FCN only: extra pooled levels appended as nodes, e.g. (2, 1).
    grid: Grid only: grid sizes of the image pyramid, e.g. (2, 3) -> 13 crops.
    context_train: Grid only: (min, max) context ratio of crops in training.
    context_test: Grid only: context ratio at test time.
    num_patch: Sampling only: random-resized crops per image.
    patch_size: Grid/Sampling: side length crops are resized to before encoding."""
    patch: str = "fcn"
    pyramid: Tuple[int, ...] = ()
    grid: Tuple[int, ...] = (2, 3)
    context_train: Tuple[float, float] = (1.0, 3.0)
    context_test: float = 2.0
    num_patch: int = 9
    patch_size: int = 84

    def __post_init__(self):
        if self.patch not in PATCHES:
            raise OptionError("patch", f"expected one of {', '.join(PATCHES)}, got {self.patch!r}")
        for key in ("pyramid", "grid"):
            sizes = getattr(self, key)
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes):
                raise OptionError(key, f"expected grid sizes >= 1 (e.g. [2, 1]), got {list(sizes)}")
            object.__setattr__(self, key, tuple(sizes))
        for key in ("num_patch", "patch_size"):
            emd.Option(1, int, low=1).check(getattr(self, key), key)
        object.__setattr__(self, "context_train", tuple(self.context_train))
        object.__setattr__(self, "context_test", float(self.context_test))


def _solvers(solver: str, solver_options: Optional[dict], eval_solver: str,
             eval_solver_options: Optional[dict]) -> Tuple[emd.Solver, emd.Solver]:
    """The training and evaluation solvers of the options (evaluation: the training one
    unless another name or other options are given)."""
    for key, name in (("solver", solver), ("eval_solver", eval_solver or solver)):
        if name not in emd.solvers():
            raise OptionError(key, f"unknown EMD solver {name!r}; "
                              f"available: {', '.join(emd.solvers())}")
    train = emd.make_solver(solver, solver_options, "solver_options")
    if eval_solver:
        return train, emd.make_solver(eval_solver, eval_solver_options, "eval_solver_options")
    if eval_solver_options is None:
        return train, train
    return train, emd.make_solver(solver, eval_solver_options, "eval_solver_options")


class DeepEMD(FewShotClassifier):
    """DeepEMD behind the few-shot classifier API, composed of its parts:

        DeepEMD(backbone, Nodes(patch="fcn"), EMDHead(train_solver, eval_solver), StructuredFC(steps=100))

    ``nodes`` (:class:`Nodes`): how images become nodes (``encode_nodes``); ``head``
    (:class:`EMDHead`): weights, cost, the training and evaluation solvers, the logits
    (default: exact in both modes); ``sfc`` (:class:`StructuredFC`): the prototype fitter
    for K > 1 shots. A config's flat ``model.options`` reach these parts through
    :func:`deepemd` (the registered constructor)."""

    offers_matching = True

    def __init__(self, backbone: Backbone, nodes: Nodes = Nodes(), head: Optional[EMDHead] = None,
                 sfc: StructuredFC = StructuredFC()):
        super().__init__(backbone)
        self.nodes, self.sfc = nodes, sfc
        if head is None:
            exact = emd.make_solver("exact")
            head = EMDHead(exact, exact)
        self.head = head
        self.prototypes: Optional[torch.Tensor] = None

    @property
    def temperature(self) -> float:
        return self.head.temperature

    @property
    def metric(self) -> str:
        return self.head.metric

    @property
    def center(self) -> bool:
        return self.head.center

    # ------------------------------------------------------------------ nodes
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Node features [B, C, n_nodes] of images [B, C_in, H, W]."""
        return self.encode_nodes(images)[0]

    def encode_nodes(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Node features [B, C, n_nodes] of images [B, C_in, H, W] and the image region
        behind each node, boxes [n_nodes, 4] as (x0, y0, x1, y1) in pixels (the same for
        every image of the batch): FCN, the feature-map cell (pyramid levels: the pooled
        cells); Grid and Sampling, the crop."""
        H, W = images.shape[-2:]
        if self.nodes.patch == "fcn":
            fmap = self.backbone.forward_features(images)
            levels = [fmap.shape[-2:]] + [(s, s) for s in self.nodes.pyramid]
            nodes = [fmap.flatten(2)] + [F.adaptive_avg_pool2d(fmap, s).flatten(2) for s in self.nodes.pyramid]
            boxes = [(c * W / w, r * H / h, (c + 1) * W / w, (r + 1) * H / h)
                     for h, w in levels for r in range(h) for c in range(w)]
            return torch.cat(nodes, dim=2), torch.tensor(boxes)
        regions = self._grid_regions(H, W) if self.nodes.patch == "grid" else self._sampled_regions(images)
        crops = torch.stack([F.interpolate(images[:, :, y0:y1, x0:x1], size=self.nodes.patch_size,
                                           mode="bilinear", align_corners=False)
                             for y0, y1, x0, x1 in regions], dim=1)
        B, P = crops.shape[:2]
        pooled = self.backbone(crops.flatten(0, 1))                  # [B * P, C]
        boxes = torch.tensor([(x0, y0, x1, y1) for y0, y1, x0, x1 in regions], dtype=torch.float32)
        return pooled.reshape(B, P, -1).transpose(1, 2), boxes

    def _grid_regions(self, H: int, W: int):
        """(y0, y1, x0, x1) of every Grid crop: g x g cells per pyramid level, each cell
        enlarged by the context ratio (random in training, ``context_test`` otherwise)."""
        out = []
        for g in self.nodes.grid:
            for r in range(g):
                for c in range(g):
                    ratio = (float(torch.empty(()).uniform_(*self.nodes.context_train)) if self.training
                             else self.nodes.context_test)
                    h, w = H / g * ratio, W / g * ratio
                    cy, cx = (r + 0.5) * H / g, (c + 0.5) * W / g
                    out.append((max(0, int(cy - h / 2)), min(H, int(math.ceil(cy + h / 2))),
                                max(0, int(cx - w / 2)), min(W, int(math.ceil(cx + w / 2)))))
        return out

    def _sampled_regions(self, images: torch.Tensor):
        """(y0, y1, x0, x1) of ``num_patch`` random-resized crops (shared by the batch)."""
        from torchvision.transforms import RandomResizedCrop
        out = []
        for _ in range(self.nodes.num_patch):
            i, j, h, w = RandomResizedCrop.get_params(images, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
            out.append((i, i + h, j, j + w))
        return out

    def supports_feature_cache(self) -> bool:
        return self.nodes.patch != "sampling"

    # ------------------------------------------------------------------ EMD
    def logits(self, query: torch.Tensor, proto: torch.Tensor) -> torch.Tensor:
        """Logits [Q, W] of query nodes [Q, C, M] against prototype nodes [W, C, N]."""
        return self.head(query, proto)

    def fit_support(self, support_features: torch.Tensor, support_labels: torch.Tensor) -> None:
        n_way = int(support_labels.max()) + 1
        if support_features.shape[0] == n_way:  # 1-shot: the support nodes are the prototypes
            order = torch.argsort(support_labels)
            self.prototypes = support_features[order]
        else:
            self.prototypes = self.structured_fc(support_features, support_labels)

    def score(self, query_features: torch.Tensor) -> torch.Tensor:
        return self.logits(query_features, self.prototypes)

    def fit_supports(self, support_features: torch.Tensor, support_labels: torch.Tensor) -> List[torch.Tensor]:
        """Prototypes of E episodes at once (support [E, n, C, n_nodes], labels [E, n]): for
        K > 1 shots the Structured FC fits of all E run in lockstep (:meth:`StructuredFC.fit_many`)."""
        n_way = int(support_labels.max()) + 1
        if support_features.shape[1] == n_way:
            return super().fit_supports(support_features, support_labels)
        return list(self.sfc.fit_many(self.head, support_features, support_labels))

    def structured_fc(self, support: torch.Tensor, labels: torch.Tensor,
                      stats: Optional[Dict[str, int]] = None) -> torch.Tensor:
        """Structured FC prototypes [n_way, C, n_nodes] fitted to support [n, C, n_nodes]
        (:meth:`StructuredFC.fit` with this model's EMD head)."""
        return self.sfc.fit(self.head, support, labels, stats)

    def sfc_loss(self, support: torch.Tensor, labels: torch.Tensor, proto: torch.Tensor) -> float:
        """Cross-entropy of the support set against prototypes ``proto`` (diagnostics)."""
        with torch.no_grad():
            return float(F.cross_entropy(self.logits(support, proto), labels))

    def describe(self) -> Dict[str, str]:
        """What produced the numbers: reported by eval.py."""
        return {"patch": self.nodes.patch, "solver": self.head.train_solver.name,
                "eval_solver": self.head.eval_solver.name}


@METHODS.register("deepemd")
def deepemd(backbone: Backbone, patch: str = "fcn", pyramid: Sequence[int] = (),
            grid: Sequence[int] = (2, 3), context_train: Sequence[float] = (1.0, 3.0),
            context_test: float = 2.0, num_patch: int = 9, patch_size: int = 84,
            solver: str = "exact", solver_options: Optional[dict] = None,
            eval_solver: str = "", eval_solver_options: Optional[dict] = None,
            temperature: float = 12.5, metric: str = "cosine", center: bool = True,
            sfc_steps: int = 100, sfc_batch: int = 4, sfc_lr: float = 0.1,
            sfc_momentum: float = 0.9, sfc_dampening: float = 0.9,
            sfc_weight_decay: float = 0.0, sfc_seed: int = 0, sfc_warm_start: bool = True,
            sfc_gradient: str = "closed_form") -> DeepEMD:
    """DeepEMD from a config's flat ``model.options`` (the keys config files and old
    checkpoints use): the node keys build :class:`Nodes`; ``solver`` / ``solver_options``
    (training) and ``eval_solver`` / ``eval_solver_options`` (evaluation; default the
    training one), ``temperature`` (12.5 in the paper), ``metric`` (``cosine`` | ``l2``)
    and ``center`` (channel-centre nodes first) build :class:`EMDHead`; the ``sfc_*`` keys
    are :class:`StructuredFC`'s fields (``sfc_gradient``: ``closed_form`` where the solver
    allows it, or ``autograd``)."""
    nodes = Nodes(patch, pyramid, grid, context_train, context_test, num_patch, patch_size)   # tuples made there
    head = EMDHead(*_solvers(solver, solver_options, eval_solver, eval_solver_options),
                   temperature, metric, center)
    sfc = StructuredFC(sfc_steps, sfc_batch, sfc_lr, sfc_momentum, sfc_dampening,
                       sfc_weight_decay, sfc_seed, sfc_warm_start, sfc_gradient)
    return DeepEMD(backbone, nodes, head, sfc)
