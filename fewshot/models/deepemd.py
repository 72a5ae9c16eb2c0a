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
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import emd
from ..errors import ConfigError
from .backbones import Backbone
from .classifier import METHODS, FewShotClassifier, class_means

PATCHES = ("fcn", "grid", "sampling")
METRICS = ("cosine", "l2")


def cross_reference_weights(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Weights of x's nodes given y: x [P, C, M], y [Q, C, N] -> [P, Q, M],
    w[p, q, i] = relu(<x[p, :, i], mean_j y[q, :, j]>) + 1e-3."""
    return F.relu(torch.einsum("pcm,qc->pqm", x, y.mean(-1))) + 1e-3


def node_cost(query: torch.Tensor, proto: torch.Tensor, metric: str = "cosine",
              center: bool = True) -> torch.Tensor:
    """Cost between nodes: query [Q, C, M], proto [W, C, N] -> [Q, W, M, N].

    ``cosine``: 1 - cos(u_i, v_j); ``l2``: |u_i - v_j|^2. With ``center`` each node's
    channels are centred (the mean over channels subtracted) first, as in DeepEMD."""
    if center:
        query = query - query.mean(1, keepdim=True)
        proto = proto - proto.mean(1, keepdim=True)
    if metric == "cosine":
        qn = F.normalize(query, dim=1)
        pn = F.normalize(proto, dim=1)
        return 1 - torch.einsum("qcm,wcn->qwmn", qn, pn)
    if metric == "l2":
        d = query.permute(0, 2, 1)[:, None, :, None, :] - proto.permute(0, 2, 1)[None, :, None, :, :]
        return d.pow(2).sum(-1)
    raise ConfigError(f"DeepEMD metric must be one of {METRICS}, got {metric!r}")


def emd_problem(query: torch.Tensor, proto: torch.Tensor, metric: str = "cosine",
                center: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeepEMD's transport problems between query nodes [Q, C, M] and prototype nodes
    [W, C, N]: cost [Q, W, M, N], cross-reference weights a [Q, W, M] and b [Q, W, N],
    each normalised to total mass M."""
    M = query.shape[2]
    a = cross_reference_weights(query, proto)                       # [Q, W, M]
    b = cross_reference_weights(proto, query).transpose(0, 1)       # [Q, W, N]
    a = a * (M / a.sum(-1, keepdim=True))
    b = b * (M / b.sum(-1, keepdim=True))
    return node_cost(query, proto, metric, center), a, b


def emd_logits(query: torch.Tensor, proto: torch.Tensor, solver: Union[str, emd.Solver] = "exact",
               solver_options: Optional[dict] = None, temperature: float = 12.5,
               metric: str = "cosine", center: bool = True,
               init: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
               return_result: bool = False
               ) -> Union[torch.Tensor, Tuple[torch.Tensor, emd.EMDResult]]:
    """DeepEMD logits [Q, W] of query nodes [Q, C, M] against prototype nodes [W, C, N].

    ``solver``: a built :class:`fewshot.emd.Solver`, or a name with ``solver_options``.
    ``init``: starting potentials (f [Q, W, M], g [Q, W, N]) for solvers that warm-start
    (``Solver.warm_starts``). With ``return_result`` the solver's EMDResult over the Q * W
    problems (query-major) is returned too."""
    if not isinstance(solver, emd.Solver):
        solver = emd.make_solver(solver, solver_options)
    elif solver_options:
        raise ConfigError("emd_logits: solver_options given with a built solver")
    Q, W, M = query.shape[0], proto.shape[0], query.shape[2]
    N = proto.shape[2]
    cost, a, b = emd_problem(query, proto, metric, center)
    x = y = None
    if solver.needs_points:                                         # e.g. chain: node features
        x = query.transpose(1, 2)[:, None].expand(Q, W, M, -1).reshape(Q * W, M, -1)
        y = proto.transpose(1, 2)[None].expand(Q, W, N, -1).reshape(Q * W, N, -1)
    if init is not None:
        init = (init[0].reshape(Q * W, M), init[1].reshape(Q * W, N))
    result = solver(cost.reshape(Q * W, M, N), a.reshape(Q * W, M), b.reshape(Q * W, N),
                    x=x, y=y, init=init)
    logits = (temperature * (1 - result.value / M)).reshape(Q, W)
    return (logits, result) if return_result else logits


class EMDHead(nn.Module):
    """The EMD layer of DeepEMD: cross-reference weights, node cost, the solver, the logits.

    Holds two built solvers: ``train_solver`` (used in training mode) and ``eval_solver``
    (in evaluation mode); ``solver`` is the one of the current mode."""

    def __init__(self, train_solver: emd.Solver, eval_solver: emd.Solver, temperature: float = 12.5,
                 metric: str = "cosine", center: bool = True):
        super().__init__()
        if metric not in METRICS:
            raise ConfigError(f"model.options.metric must be one of {METRICS}, got {metric!r}")
        temperature = emd.Option(12.5, float, low=0, low_open=True).check(
            temperature, "model.options.temperature")
        center = emd.Option(True, bool).check(center, "model.options.center")
        self.train_solver, self.eval_solver = train_solver, eval_solver
        self.temperature, self.metric, self.center = temperature, metric, center

    @property
    def solver(self) -> emd.Solver:
        return self.train_solver if self.training else self.eval_solver

    def forward(self, query: torch.Tensor, proto: torch.Tensor,
                init: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, return_result: bool = False):
        """Logits [Q, W] of query nodes [Q, C, M] against prototype nodes [W, C, N] (see
        :func:`emd_logits`)."""
        return emd_logits(query, proto, self.solver, None, self.temperature, self.metric, self.center,
                          init=init, return_result=return_result)

    def problem(self, query: torch.Tensor, proto: torch.Tensor):
        """cost [Q, W, M, N], a [Q, W, M], b [Q, W, N] of query [Q, C, M] and proto [W, C, N]."""
        return emd_problem(query, proto, self.metric, self.center)


_SFC_OPTIONS = {
    "steps": emd.Option(100, int, low=1), "batch": emd.Option(4, int, low=1),
    "lr": emd.Option(0.1, float, low=0, low_open=True), "momentum": emd.Option(0.9, float, low=0, high=1),
    "dampening": emd.Option(0.9, float, low=0, high=1), "weight_decay": emd.Option(0.0, float, low=0),
    "seed": emd.Option(0, int, low=0), "warm_start": emd.Option(True, bool)}


@dataclass(frozen=True)
class StructuredFC:
    """Structured FC fitting for K > 1 shots: ``steps`` epochs of SGD (``lr``, ``momentum``,
    ``dampening``, ``weight_decay``) in batches of ``batch`` support images, shuffled by
    ``seed`` (the same for every episode, so an episode's result does not depend on which
    episodes ran before it); ``warm_start``: start each support image's EMD problems from
    the potentials of its previous step (solvers that warm-start, e.g. sinkhorn)."""
    steps: int = 100
    batch: int = 4
    lr: float = 0.1
    momentum: float = 0.9
    dampening: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    warm_start: bool = True

    def __post_init__(self):
        for key, opt in _SFC_OPTIONS.items():
            object.__setattr__(self, key, opt.check(getattr(self, key), f"model.options.sfc_{key}"))

    def fit(self, head: EMDHead, support: torch.Tensor, labels: torch.Tensor,
            stats: Optional[Dict[str, int]] = None) -> torch.Tensor:
        """Prototypes [n_way, C, n_nodes] fitted to support [n, C, n_nodes] with labels [n].

        Initialised from the class means, then SGD on the cross-entropy of the support
        images' DeepEMD logits against the prototypes (gradient through the EMD layer);
        the features are held fixed. ``stats``, if given, accumulates ``solves`` (solver
        calls) and ``iterations`` (the solvers' ``info["iterations"]`` where they report it)."""
        proto = nn.Parameter(class_means(support.detach(), labels).clone())
        opt = torch.optim.SGD([proto], lr=self.lr, momentum=self.momentum,
                              dampening=self.dampening, weight_decay=self.weight_decay)
        feats = support.detach()
        n, W = feats.shape[0], proto.shape[0]
        potentials = None
        if self.warm_start and head.solver.warm_starts:
            potentials = (feats.new_zeros(n, W, feats.shape[2]), feats.new_zeros(n, W, proto.shape[2]))
        gen = torch.Generator().manual_seed(self.seed)
        with torch.enable_grad():
            for _ in range(self.steps):
                for chunk in torch.randperm(n, generator=gen).to(feats.device).split(self.batch):
                    opt.zero_grad()
                    init = None if potentials is None else (potentials[0][chunk], potentials[1][chunk])
                    logits, result = head(feats[chunk], proto, init=init, return_result=True)
                    if stats is not None:
                        stats["solves"] = stats.get("solves", 0) + 1
                        stats["iterations"] = stats.get("iterations", 0) + int(result.info.get("iterations", 0))
                    if potentials is not None:
                        potentials[0][chunk] = result.potentials[0].reshape(len(chunk), W, -1)
                        potentials[1][chunk] = result.potentials[1].reshape(len(chunk), W, -1)
                    F.cross_entropy(logits, labels[chunk]).backward()
                    opt.step()
        return proto.detach()


@METHODS.register("deepemd")
class DeepEMD(FewShotClassifier):
    """DeepEMD behind the few-shot classifier API.

    Args:
        backbone: feature extractor with ``forward_features``.
        patch: ``fcn`` | ``grid`` | ``sampling`` (how images become nodes).
        pyramid: FCN only: extra pooled levels appended as nodes, e.g. [2, 1].
        grid: Grid only: grid sizes of the image pyramid, e.g. [2, 3] -> 13 patches.
        context_train: Grid only: (min, max) context ratio of crops in training.
        context_test: Grid only: context ratio at test time.
        num_patch: Sampling only: random-resized crops per image.
        patch_size: Grid/Sampling: side length crops are resized to before encoding.
        solver, solver_options: EMD layer used in training (``fewshot.emd.solvers()``).
        eval_solver, eval_solver_options: EMD layer in evaluation (default: the training one).
        temperature: logit scale (12.5 in the paper).
        metric: ``cosine`` or ``l2``; center: channel-centre node features first.
        sfc_steps, sfc_batch, sfc_lr, sfc_momentum, sfc_dampening, sfc_weight_decay:
            Structured FC fitting for K > 1 shots (epochs over the support set, batch
            size, SGD settings).
        sfc_seed: seed of the support-set shuffling in SFC (the same for every episode,
            so an episode's result does not depend on which episodes ran before it).
        sfc_warm_start: start each SFC step's EMD problems from the potentials of the
            previous step (solvers that warm-start, e.g. sinkhorn).

    Composed of named parts: the backbone and node settings (``encode_nodes``), the EMD
    head (``head``: weights, cost, the training and evaluation solvers, built and checked
    here) and the Structured FC fitter (``sfc``).
    """

    def __init__(self, backbone: Backbone, patch: str = "fcn", pyramid: Sequence[int] = (),
                 grid: Sequence[int] = (2, 3), context_train: Sequence[float] = (1.0, 3.0),
                 context_test: float = 2.0, num_patch: int = 9, patch_size: int = 84,
                 solver: str = "exact", solver_options: Optional[dict] = None,
                 eval_solver: str = "", eval_solver_options: Optional[dict] = None,
                 temperature: float = 12.5, metric: str = "cosine", center: bool = True,
                 sfc_steps: int = 100, sfc_batch: int = 4, sfc_lr: float = 0.1,
                 sfc_momentum: float = 0.9, sfc_dampening: float = 0.9,
                 sfc_weight_decay: float = 0.0, sfc_seed: int = 0, sfc_warm_start: bool = True):
        super().__init__(backbone)
        if patch not in PATCHES:
            raise ConfigError(f"model.options.patch must be one of {PATCHES}, got {patch!r}")
        self.patch, self.pyramid, self.grid = patch, tuple(pyramid), tuple(grid)
        self.context_train, self.context_test = tuple(context_train), float(context_test)
        self.num_patch, self.patch_size = num_patch, patch_size
        where = "model.options"
        for key, name in (("solver", solver), ("eval_solver", eval_solver or solver)):
            if name not in emd.solvers():
                raise ConfigError(f"{where}.{key}: unknown EMD solver {name!r}; "
                                  f"available: {', '.join(emd.solvers())}")
        train = emd.make_solver(solver, solver_options, f"{where}.solver_options")
        if eval_solver:
            evaluation = emd.make_solver(eval_solver, eval_solver_options, f"{where}.eval_solver_options")
        else:   # the training solver, unless other options are given for it
            evaluation = train if eval_solver_options is None else \
                emd.make_solver(solver, eval_solver_options, f"{where}.eval_solver_options")
        self.head = EMDHead(train, evaluation, temperature, metric, center)
        self.sfc = StructuredFC(sfc_steps, sfc_batch, sfc_lr, sfc_momentum, sfc_dampening,
                                sfc_weight_decay, sfc_seed, sfc_warm_start)
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
        if self.patch == "fcn":
            fmap = self.backbone.forward_features(images)
            levels = [fmap.shape[-2:]] + [(s, s) for s in self.pyramid]
            nodes = [fmap.flatten(2)] + [F.adaptive_avg_pool2d(fmap, s).flatten(2) for s in self.pyramid]
            boxes = [(c * W / w, r * H / h, (c + 1) * W / w, (r + 1) * H / h)
                     for h, w in levels for r in range(h) for c in range(w)]
            return torch.cat(nodes, dim=2), torch.tensor(boxes)
        regions = self._grid_regions(H, W) if self.patch == "grid" else self._sampled_regions(images)
        crops = torch.stack([F.interpolate(images[:, :, y0:y1, x0:x1], size=self.patch_size,
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
        for g in self.grid:
            for r in range(g):
                for c in range(g):
                    ratio = (float(torch.empty(()).uniform_(*self.context_train)) if self.training
                             else self.context_test)
                    h, w = H / g * ratio, W / g * ratio
                    cy, cx = (r + 0.5) * H / g, (c + 0.5) * W / g
                    out.append((max(0, int(cy - h / 2)), min(H, int(math.ceil(cy + h / 2))),
                                max(0, int(cx - w / 2)), min(W, int(math.ceil(cx + w / 2)))))
        return out

    def _sampled_regions(self, images: torch.Tensor):
        """(y0, y1, x0, x1) of ``num_patch`` random-resized crops (shared by the batch)."""
        from torchvision.transforms import RandomResizedCrop
        out = []
        for _ in range(self.num_patch):
            i, j, h, w = RandomResizedCrop.get_params(images, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
            out.append((i, i + h, j, j + w))
        return out

    def supports_feature_cache(self) -> bool:
        return self.patch != "sampling"

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
        return {"patch": self.patch, "solver": self.head.train_solver.name,
                "eval_solver": self.head.eval_solver.name}
