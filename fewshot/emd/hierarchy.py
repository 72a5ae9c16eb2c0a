"""Relaxed EMD^rho between histograms on a fixed tree of classes (Martinez et al. 2016):
an output-space loss for hierarchies such as the WordNet tree of the ImageNet or
miniImageNet classes, or any tree given as a parent list.

For histograms p, q [B, K] over the tree's K nodes (classes are leaves or inner nodes)
and S_v = sum of (p - q) over the subtree of v, the value is

    EMD^rho(p, q) = sum over nodes v != root of length_v * |S_v|^rho,

rho = 1 being the exact EMD under the tree metric (path lengths) and rho = 2 the
relaxed EMD^2. Closed form: the subtree sums S = (p - q) A are one product with the
sparse [K, K] ancestor-or-self matrix A (sum of the node depths nonzeros, O(K depth)
per pair instead of O(K^2) dense or an LP). Gradient (eq. 11/15 of the paper), also in
closed form: with w_v = length_v * rho * |S_v|^(rho-1) sign(S_v),

    d EMD^rho / d p_u = sum over the ancestors-or-self v of u of w_v = (A w)_u,

projected onto {g : sum g = 0} so that a gradient step keeps the total mass (the
dirt-conserving gradient); d / d q is its negative. A chain (1-D ordered classes) is
the tree whose parent list is [-1, 0, 1, 2, ...].

Where the mass may sit decides the projection, and the histograms' width says where:
p, q [B, C] with C < K put mass on the first C nodes only (the bins: the classes, which
:meth:`ClassTree.from_json` numbers first; on a class tree, its leaves). Then the gradient
is eq. 15 of the paper: (A w)_u for the C bins, projected over those C bins
(g_u - mean over the bins), and latent nodes have no entry (zero gradient). p, q [B, K]
(mass allowed on every node, inner nodes too) project over all K nodes. The value is the
same either way.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from ..errors import ConfigError
from ._problem import EMDInputError


class ClassTree:
    """A rooted tree of K nodes: ``parents`` [K] (-1 for the root) and edge ``lengths`` [K]
    (the edge from v to its parent; default 1; the root's is ignored), optionally ``nodes``
    (names). Checked once here: one root, indices in range, no cycle, finite lengths >= 0.

    ``subtree_sums(x)`` [B, K] -> [B, K] and ``path_sums(w)`` (sums over each node's
    ancestors-or-self) are products with the sparse ancestor matrix, built once;
    ``distances()`` [K, K] is the tree metric (path lengths)."""

    def __init__(self, parents: Sequence[int], lengths: Optional[Sequence[float]] = None,
                 nodes: Optional[Sequence[str]] = None, where: str = "class tree"):
        try:
            parents = [int(p) for p in parents]
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: parents must be a list of integers (-1 for the root)") from None
        K = len(parents)
        if K == 0:
            raise ConfigError(f"{where}: the tree has no nodes")
        if lengths is None:
            lengths = [1.0] * K
        lengths = [float(x) for x in lengths]
        if len(lengths) != K or (nodes is not None and len(nodes) != K):
            raise ConfigError(f"{where}: nodes, parents and lengths differ in length")
        name = (lambda v: repr(nodes[v])) if nodes is not None else str  # noqa: E731
        roots = [v for v, p in enumerate(parents) if p < 0]
        if len(roots) != 1:
            raise ConfigError(f"{where}: expected exactly one root (parent -1), found {len(roots)}")
        for v, p in enumerate(parents):
            if p >= K:
                raise ConfigError(f"{where}: parent index {p} of node {name(v)} is out of range")
            if p >= 0 and not (math.isfinite(lengths[v]) and lengths[v] >= 0):
                raise ConfigError(f"{where}: edge length of node {name(v)} must be a finite number >= 0, "
                                  f"got {lengths[v]}")
        # ancestor-or-self lists, each node's from its parent's (memoised walk, no recursion)
        anc: list = [None] * K
        anc[roots[0]] = [roots[0]]
        for u in range(K):
            path = []
            v = u
            while anc[v] is None:
                path.append(v)
                v = parents[v]
                if len(path) > K:
                    raise ConfigError(f"{where}: node {name(u)} is on a cycle")
            for w in reversed(path):
                anc[w] = [w] + anc[parents[w]]
        self.parents, self.nodes, self.root = parents, (list(nodes) if nodes is not None else None), roots[0]
        # for the compiled kernel: the nodes parents first, and each node's parent (root: itself)
        self._order = np.array(sorted(range(K), key=lambda v: len(anc[v])), dtype=np.int64)
        self._parent = np.array([p if p >= 0 else v for v, p in enumerate(parents)], dtype=np.int64)
        self.lengths = torch.tensor(lengths, dtype=torch.float64)
        self.lengths[self.root] = 0.0
        rows = torch.tensor([u for u in range(K) for _ in anc[u]])
        cols = torch.tensor([v for u in range(K) for v in anc[u]])
        with warnings.catch_warnings():          # torch's notes on sparse tensors being beta
            warnings.simplefilter("ignore", UserWarning)
            self._A = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(len(rows), dtype=torch.float64),
                                              (K, K)).coalesce()
        self._cache: dict = {}

    def __len__(self) -> int:
        return len(self.parents)

    @classmethod
    def from_json(cls, path: str, classes: Optional[Sequence[str]] = None, where: str = "") -> "ClassTree":
        """The tree in ``path`` (JSON ``{"nodes": [names], "parents": [parent index, -1 for the
        root], "lengths": [edge length per node] (optional, default 1)}``); with ``classes``,
        renumbered so that the classes come first, in that order (every class must be a node)."""
        where = where or f"class tree {path!r}"
        if not os.path.isfile(path):
            raise ConfigError(f"{where} does not exist")
        try:
            with open(path) as f:
                spec = json.load(f)
            nodes, parents = [str(x) for x in spec["nodes"]], [int(x) for x in spec["parents"]]
            lengths = [float(x) for x in spec.get("lengths", [1.0] * len(nodes))]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}: expected a JSON class tree with 'nodes' and 'parents' "
                              f"lists ({e})") from None
        if not len(nodes) == len(parents) == len(lengths):
            raise ConfigError(f"{where}: nodes, parents and lengths differ in length")
        if classes is None:
            return cls(parents, lengths, nodes, where=where)
        index = {n: i for i, n in enumerate(nodes)}
        missing = [c for c in classes if c not in index]
        if missing:
            raise ConfigError(f"{where}: classes {missing[:3]} are not nodes of the tree")
        chosen = set(classes)
        order = [index[c] for c in classes] + [i for i, n in enumerate(nodes) if n not in chosen]
        new = {old: i for i, old in enumerate(order)}
        if any(not 0 <= parents[o] < len(nodes) for o in order if parents[o] >= 0):
            raise ConfigError(f"{where}: a parent index is out of range")
        return cls([new[parents[o]] if parents[o] >= 0 else -1 for o in order],
                   [lengths[o] for o in order], [nodes[o] for o in order], where=where)

    def _matrix(self, transpose: bool, like: torch.Tensor) -> torch.Tensor:
        key = (transpose, like.dtype, like.device)
        if key not in self._cache:
            A = self._A.t() if transpose else self._A
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self._cache[key] = A.coalesce().to_sparse_csr().to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def subtree_sums(self, x: torch.Tensor) -> torch.Tensor:
        """S [B, K]: S[:, v] = sum of x [B, K] over the subtree of v (S = x A)."""
        return (self._matrix(True, x) @ x.t().contiguous()).t()     # node-major product

    def path_sums(self, w: torch.Tensor) -> torch.Tensor:
        """[B, K]: entry u = sum of w [B, K] over the ancestors-or-self of u (A w)."""
        return (self._matrix(False, w) @ w.t().contiguous()).t()

    def depths(self) -> torch.Tensor:
        """[K] float64: path length from the root to each node."""
        return self.path_sums(self.lengths[None])[0]

    def distances(self) -> torch.Tensor:
        """[K, K] float64 tree metric: d(u, v) = depth u + depth v - 2 depth lca(u, v)."""
        A = self._A.to_dense()
        depth = self.depths()
        return depth[:, None] + depth[None, :] - 2 * (A * self.lengths) @ A.t()

    def ancestor_matrix(self) -> torch.Tensor:
        """Dense [K, K] float64 A with A[u, v] = 1 if v is u or an ancestor of u."""
        return self._A.to_dense()


def ancestor_matrix(parents: Sequence[int]) -> torch.Tensor:
    """A [K, K] with A[u, v] = 1 if v is u or an ancestor of u; ``parents[root] = -1``."""
    return ClassTree(parents).ancestor_matrix()


def _powers(S: torch.Tensor, rho: float):
    """|S|^rho and its derivative rho |S|^(rho-1) sign(S) (rho 1 and 2 without pow)."""
    if rho == 1:
        return S.abs(), S.sign()
    if rho == 2:
        return S.square(), 2 * S
    m = S.abs()
    return m.pow(rho), rho * m.pow(rho - 1) * S.sign()


class _TreeEMD(torch.autograd.Function):
    """value [B] = sum_v length_v |S_v|^rho with the closed-form dirt-conserving gradient.

    ``compiled``: row by row in :mod:`._tree_kernel` (CPU, float32/float64); else node-major
    ([K, B]: the products with the sparse ancestor matrix read rows), on any device."""

    @staticmethod
    def forward(ctx, p, q, tree, lengths, rho, compiled, stats):
        """p, q [B, C] (C <= K: mass on the first C nodes) -> value [B]."""
        ctx.tree, ctx.compiled, ctx.n_bins = tree, compiled, p.shape[1]
        K = len(tree)
        if p.shape[1] < K:                              # latent nodes hold no mass
            p, q = (torch.cat([t, t.new_zeros(t.shape[0], K - t.shape[1])], 1) for t in (p, q))
        if compiled:           # ``stats`` [B, 6] receives the input checks' numbers (numpy)
            from . import _tree_kernel
            value = p.new_empty(p.shape[0])
            weights = torch.empty_like(p, memory_format=torch.contiguous_format)
            _tree_kernel.forward(p.detach().contiguous().numpy(), q.detach().contiguous().numpy(), tree._order,
                                 tree._parent, lengths.numpy(), rho, value.numpy(), weights.numpy(), stats)
            ctx.save_for_backward(weights)
            return value
        S = tree.subtree_sums(p - q).t()                                # node-major [K, B]
        value, slope = _powers(S, rho)
        ctx.save_for_backward(lengths[:, None] * slope)
        return lengths @ value

    @staticmethod
    def backward(ctx, grad_value):
        weights, = ctx.saved_tensors
        C = ctx.n_bins
        if ctx.compiled:
            from . import _tree_kernel
            g = torch.empty_like(weights)
            _tree_kernel.backward(weights.numpy(), ctx.tree._order, ctx.tree._parent,
                                  grad_value.detach().to(weights.dtype).contiguous().numpy(), C, g.numpy())
            g = g[:, :C]
        else:
            g = ctx.tree.path_sums(weights.t()).t()[:C]                   # node-major [C, B]
            mean = g.mean(0, keepdim=True, dtype=torch.float64).to(g.dtype)   # accumulated in float64
            g = ((g - mean) * grad_value).t()
        return (g if ctx.needs_input_grad[0] else None, -g if ctx.needs_input_grad[1] else None,
                None, None, None, None, None)


def _as_tree(tree: Union[ClassTree, Sequence[int]], lengths) -> ClassTree:
    if isinstance(tree, ClassTree):
        if lengths is not None:
            raise ConfigError("tree_emd: lengths are given with a ClassTree, which has its own")
        return tree
    if isinstance(lengths, torch.Tensor):
        lengths = lengths.detach().cpu().double().tolist()
    return ClassTree(tree, lengths)


def _check_histograms(p: torch.Tensor, q: torch.Tensor, stats: Optional[np.ndarray]) -> None:
    """NaN/inf, negative entries and unequal masses of p, q [B, K] are an EMDInputError; from
    the compiled forward's ``stats`` [B, 6] where it ran (no torch reductions between kernel
    calls, whose thread pools would wait on each other), else by torch reductions."""
    with torch.no_grad():
        if stats is not None:
            sp, sq, low, finite = stats[:, 0], stats[:, 1], stats[:, 2:4].min(0), ~stats[:, 4:].any(0)
        else:
            sp, sq = (t.sum(-1, dtype=torch.float64).cpu().numpy() for t in (p, q))
            bounds = [[float(v) for v in torch.aminmax(t)] for t in (p, q)]
            low, finite = [lo for lo, _ in bounds], [math.isfinite(lo) and math.isfinite(hi) for lo, hi in bounds]
    for name, ok in zip("pq", finite):
        if not ok:
            raise EMDInputError(f"tree_emd: {name} contains NaN or infinite values")
    for name, lo in zip("pq", low):
        if lo < 0:
            raise EMDInputError(f"tree_emd: {name} has negative entries; histograms must be >= 0")
    rtol = {torch.float64: 1e-6, torch.float32: 1e-4}.get(p.dtype, 1e-2)
    gap = np.abs(sp - sq) > rtol * np.maximum(np.maximum(sp, sq), np.finfo(np.float64).tiny)
    if gap.any():
        i = int(np.flatnonzero(gap)[0])
        raise EMDInputError(f"tree_emd: p and q must have equal mass per row; row {i} has "
                            f"sum(p) = {sp[i]:.8g}, sum(q) = {sq[i]:.8g}")


def tree_emd(p: torch.Tensor, q: torch.Tensor, tree: Union[ClassTree, Sequence[int]],
             lengths: Optional[Union[torch.Tensor, Sequence[float]]] = None,
             rho: float = 2.0, compiled: Optional[bool] = None) -> torch.Tensor:
    """EMD^rho [B] between histograms p, q [B, C] (non-negative, equal mass per row) on
    ``tree`` (a :class:`ClassTree`, or a parent list [K] with edge ``lengths`` [K]). C = K puts
    mass on every node; C < K on the first C nodes only (the classes), and the gradient is then
    projected over those C bins (eq. 15; see the module docstring).

    ``compiled``: None (default) runs the compiled kernel for float32/float64 tensors on the
    CPU and the sparse products otherwise; True or False chooses (the same numbers to rounding).

    Raises EMDInputError for mismatched shapes, NaN/inf or negative entries and unequal
    masses; see the module docstring for the formula and its gradient."""
    tree = _as_tree(tree, lengths)
    K = len(tree)
    for name, t in (("p", p), ("q", q)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise EMDInputError(f"tree_emd: {name} must be a floating-point tensor [B, {K}]")
    if p.shape != q.shape or p.dim() != 2 or not 1 <= p.shape[1] <= K:
        raise EMDInputError(f"tree_emd: p and q must both have shape [B, C] with 1 <= C <= {K} (one "
                            f"entry per tree node, or per class: the first C nodes), got "
                            f"{tuple(p.shape)} and {tuple(q.shape)}")
    if p.shape[0] == 0:
        raise EMDInputError(f"tree_emd: p {tuple(p.shape)} holds no histogram")
    if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho >= 1):
        raise EMDInputError(f"tree_emd: rho must be a number >= 1, got {rho!r}")
    kernel_ok = p.device.type == "cpu" and p.dtype in (torch.float32, torch.float64)
    if compiled and not kernel_ok:
        raise EMDInputError(f"tree_emd: compiled=True needs float32/float64 tensors on the CPU, got "
                            f"{p.dtype} on {p.device}")
    compiled = kernel_ok if compiled is None else bool(compiled)
    q = q.to(p.dtype)
    stats = np.empty((p.shape[0], 6)) if compiled else None
    if not compiled:                  # checked before; the compiled forward checks on its way
        _check_histograms(p, q, None)
    work = p if p.dtype in (torch.float32, torch.float64) else p.float()   # half types: in float32
    value = _TreeEMD.apply(work, q.to(work.dtype), tree, tree.lengths.to(p.device, work.dtype), float(rho),
                           compiled, stats)
    if compiled:
        _check_histograms(p, q, stats)
    return value.to(p.dtype)


class TreeEMDLoss(nn.Module):
    """Cross-entropy-compatible loss: EMD^rho between softmax(logits) [B, C] and one-hot
    labels [B], the C classes being the first C nodes of ``tree`` (a ClassTree or a
    parent list with ``lengths``); mean over the batch."""

    def __init__(self, tree: Union[ClassTree, Sequence[int]], lengths: Optional[Sequence[float]] = None,
                 rho: float = 2.0):
        super().__init__()
        if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho >= 1):
            raise ConfigError(f"TreeEMDLoss: rho must be a number >= 1, got {rho!r}")
        self.tree, self.rho = _as_tree(tree, lengths), float(rho)
        self.parents = self.tree.parents

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        B, C = logits.shape
        K = len(self.tree)
        if C > K:
            raise EMDInputError(f"TreeEMDLoss: logits have {C} classes but the tree has {K} nodes")
        p = logits.softmax(-1)                            # mass on the C classes only (eq. 15)
        q = torch.zeros_like(p).scatter_(1, labels[:, None], 1.0)
        return tree_emd(p, q, self.tree, rho=self.rho).mean()


def load_class_tree(path: str, classes: Sequence[str], rho: float = 2.0,
                    where: str = "class tree") -> TreeEMDLoss:
    """A TreeEMDLoss over ``classes`` from a JSON tree file (see :meth:`ClassTree.from_json`)."""
    return TreeEMDLoss(ClassTree.from_json(path, classes, where=f"{where} {path!r}"), rho=rho)


# --- Hierarchy-aware metrics, baselines and the paper's Sinkhorn loss -----------------------------
# Bertinetto et al. (CVPR 2020, "Making Better Mistakes") measure a mistake by the height of the
# lowest common ancestor (LCA) of prediction and truth; Karthik et al. (ICLR 2021) choose at test
# time the class of least expected LCA height (CRM).


def heights(tree: ClassTree) -> torch.Tensor:
    """[K] float64: the height of each node, the longest path (sum of edge lengths) from it down to
    a leaf of its subtree (0 for a leaf)."""
    h = [0.0] * len(tree)
    lengths = tree.lengths.tolist()
    for v in reversed(tree._order.tolist()):              # children before parents
        u = tree.parents[v]
        if u >= 0:
            h[u] = max(h[u], h[v] + lengths[v])
    return torch.tensor(h, dtype=torch.float64)


def lca_heights(tree: ClassTree, n_classes: Optional[int] = None) -> torch.Tensor:
    """[C, C] float64: the height of the lowest common ancestor of classes i and j (the first
    ``n_classes`` nodes, default all), 0 on the diagonal: the mistake severity of predicting j for
    i (Bertinetto et al. 2020)."""
    C = len(tree) if n_classes is None else int(n_classes)
    if not 1 <= C <= len(tree):
        raise ConfigError(f"lca_heights: n_classes must be in 1..{len(tree)}, got {n_classes}")
    A = tree.ancestor_matrix()[:C].bool()                 # [C, K]
    depth, height = tree.depths(), heights(tree)
    out = torch.zeros(C, C, dtype=torch.float64)
    for i in range(C):
        common = A[i] & A                                 # [C, K]: common ancestors of i and each j
        lca = torch.where(common, depth, -1.0).argmax(1)  # the deepest one
        out[i] = height[lca]
    out.fill_diagonal_(0.0)
    return out


def crm_scores(prob: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    """Conditional risk minimisation (Karthik et al. 2021): scores [N, C] = - sum_c prob[n, c]
    cost[c, k], the negated expected cost of answering k; rank by them instead of prob [N, C].
    ``cost`` [C, C] is e.g. :func:`lca_heights`."""
    return -(prob @ cost.to(prob))


def hierarchy_metrics(scores: torch.Tensor, labels: torch.Tensor, severity: torch.Tensor,
                      k: int = 5) -> dict:
    """Top-1 error (%), mistake severity (mean severity of the top-1 prediction over the
    mistakes), and the average hierarchical distance of the top-1 and top-``k`` predictions
    (mean severity over the k best-scored classes, correct ones counting 0, averaged over the
    samples) for scores [N, C] (higher is better: probabilities, logits, :func:`crm_scores`),
    labels [N] and severity [C, C] (:func:`lca_heights`; severity[y, j] for answering j)."""
    if scores.dim() != 2 or labels.shape != scores.shape[:1] or severity.shape != (scores.shape[1],) * 2:
        raise EMDInputError(f"hierarchy_metrics: expected scores [N, C], labels [N] and severity [C, C], got "
                            f"{tuple(scores.shape)}, {tuple(labels.shape)} and {tuple(severity.shape)}")
    if not 1 <= k <= scores.shape[1]:
        raise EMDInputError(f"hierarchy_metrics: k must be in 1..{scores.shape[1]}, got {k}")
    top = scores.topk(k, dim=1).indices                  # [N, k]
    dist = severity.to(scores.device, torch.float64)[labels[:, None], top]     # [N, k]
    wrong = top[:, 0] != labels
    return {"top1_error": 100.0 * float(wrong.double().mean()),
            "mistake_severity": float(dist[wrong, 0].mean()) if bool(wrong.any()) else 0.0,
            "hdist_at_1": float(dist[:, 0].mean()),
            f"hdist_at_{k}": float(dist.mean())}


def soft_labels(labels: torch.Tensor, severity: torch.Tensor, beta: float) -> torch.Tensor:
    """Soft targets [N, C] of Bertinetto et al. 2020: softmax over classes j of
    -beta * severity[y, j] / max severity (so distances lie in [0, 1])."""
    if not (math.isfinite(beta) and beta > 0):
        raise ConfigError(f"soft_labels: beta must be a number > 0, got {beta!r}")
    d = severity / severity.max().clamp_min(torch.finfo(torch.float64).tiny)
    return torch.softmax(-beta * d[labels], dim=1)


class HXELoss(nn.Module):
    """Hierarchical cross-entropy (Bertinetto et al. 2020): the softmax over the C classes (the
    first C nodes of ``tree``) gives every node v the probability P(v) of its subtree, and

        HXE(y) = - sum over the nodes v on the path from y up to the root (root excluded) of
                 exp(-alpha depth(v)) log( P(v) / P(parent v) ),

    depth(v) the path length from the root (:meth:`ClassTree.depths`, in edge lengths): the
    weighting of the authors' code (``exp(-alpha * len(tree position))``), which the paper
    writes as exp(-alpha h(C)) and describes as discounting information down the hierarchy:
    alpha > 0 stresses the coarse decisions. alpha = 0 is cross-entropy. Batch mean; memory
    O(B C K) (the subtree log-probabilities by log-sum-exp)."""

    def __init__(self, tree: ClassTree, n_classes: int, alpha: float):
        super().__init__()
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ConfigError(f"HXELoss: alpha must be a number >= 0, got {alpha!r}")
        A = tree.ancestor_matrix()[:n_classes]                           # [C, K]
        parent = torch.tensor(tree._parent)
        weight = torch.exp(-alpha * tree.depths())
        weight[tree.root] = 0.0
        member = A.bool()                                                # class c under node v
        member[:, ~member.any(0)] = True     # nodes above no class: off every path, kept finite
        self.register_buffer("member", member)
        self.register_buffer("path", A * weight)                         # [C, K]: weighted path of y
        self.register_buffer("parent", parent)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logp = logits.log_softmax(-1)                                    # [B, C]
        sub = logp[:, :, None].masked_fill(~self.member, float("-inf")).logsumexp(1)   # [B, K]
        step = sub - sub[:, self.parent]                                 # log P(v) / P(parent v)
        return -(self.path.to(logits)[labels] * step).sum(1).mean()


class _SinkhornOneHot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prob, cost_y, lam):
        ctx.save_for_backward(prob, cost_y)
        ctx.lam = lam
        return (prob * cost_y).sum(1)

    @staticmethod
    def backward(ctx, grad_value):
        prob, cost_y = ctx.saved_tensors
        g = cost_y + prob.clamp_min(torch.finfo(prob.dtype).tiny).log() / ctx.lam
        g = g - g.mean(1, keepdim=True)
        return g * grad_value[:, None], None, None


def sinkhorn_onehot_loss(prob: torch.Tensor, labels: torch.Tensor, cost: torch.Tensor,
                         lam: float) -> torch.Tensor:
    """The Sinkhorn distance against one-hot labels as Martinez et al. 2016 train with it (the
    "SD" loss): value [B] = <P, M> = sum_c prob[:, c] cost[c, y] (against a one-hot target the
    only feasible plan sends all of prob to y, whatever lambda), gradient the converged
    Sinkhorn dual log(u) / lambda, centred. For a one-hot b the Sinkhorn fixed point
    u_c K_cy v_y = prob_c gives log(u_c) / lambda = cost[c, y] + log(prob_c) / lambda + const,
    which is what the backward pass returns (exactly, without iterating).
    prob [B, C] (rows summing to 1), labels [B], cost [C, C]."""
    if not (math.isfinite(lam) and lam > 0):
        raise ConfigError(f"sinkhorn_onehot_loss: lam must be a number > 0, got {lam!r}")
    return _SinkhornOneHot.apply(prob, cost.to(prob)[:, labels].t(), float(lam))
