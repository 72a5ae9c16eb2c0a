"""Relaxed EMD^rho between class-probability histograms on a fixed tree of classes
(Martinez et al. 2016): an output-space loss for hierarchies such as the WordNet tree
of the miniImageNet classes, or any tree given as a parent list.

For histograms p, q over the tree's nodes (classes are leaves or inner nodes) and
S_v = sum of (p - q) over the subtree of v, the loss is

    EMD^rho(p, q) = sum over nodes v != root of length_v * |S_v|^rho,

rho = 1 being the exact EMD under the tree metric and rho = 2 the relaxed EMD^2. The
gradient with respect to p is projected to sum zero (dirt-conserving, eq. 11/15).
A chain (1-D ordered classes) is the tree whose parent list is [-1, 0, 1, 2, ...].
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..errors import ConfigError
from ._tree import _ZeroSum


def ancestor_matrix(parents: Sequence[int]) -> torch.Tensor:
    """A [K, K] with A[u, v] = 1 if v is u or an ancestor of u; ``parents[root] = -1``."""
    K = len(parents)
    roots = [v for v, p in enumerate(parents) if p < 0]
    if len(roots) != 1:
        raise ConfigError(f"class tree: expected exactly one root (parent -1), found {len(roots)}")
    A = torch.zeros(K, K, dtype=torch.float64)
    for u in range(K):
        v, seen = u, 0
        while v >= 0:
            if not 0 <= v < K:
                raise ConfigError(f"class tree: parent index {v} of node {u} is out of range")
            A[u, v] = 1
            v = parents[v]
            seen += 1
            if seen > K:
                raise ConfigError(f"class tree: node {u} is on a cycle")
    return A


def tree_emd(p: torch.Tensor, q: torch.Tensor, parents: Sequence[int],
             lengths: Optional[torch.Tensor] = None, rho: float = 2.0) -> torch.Tensor:
    """EMD^rho [B] between histograms p, q [B, K] (equal mass) on the tree ``parents`` [K]
    with edge lengths [K] (edge from v to its parent; default 1, the root's is ignored)."""
    if p.shape != q.shape or p.dim() != 2 or p.shape[1] != len(parents):
        raise ValueError(f"p and q must both have shape [B, {len(parents)}], got "
                         f"{tuple(p.shape)} and {tuple(q.shape)}")
    A = ancestor_matrix(parents).to(p.device, p.dtype)
    if lengths is None:
        lengths = torch.ones(len(parents), dtype=p.dtype, device=p.device)
    lengths = lengths.to(p.device, p.dtype).masked_fill(
        torch.tensor([x < 0 for x in parents], device=p.device), 0.0)
    S = (_ZeroSum.apply(p) - q) @ A
    return (lengths * S.abs().pow(rho)).sum(-1)


class TreeEMDLoss(nn.Module):
    """Cross-entropy-compatible loss: EMD^rho between softmax(logits) [B, C] and one-hot
    labels [B], the C classes being the first C nodes of the tree ``parents``."""

    def __init__(self, parents: Sequence[int], lengths: Optional[Sequence[float]] = None,
                 rho: float = 2.0):
        super().__init__()
        self.parents, self.rho = list(parents), rho
        self.register_buffer("lengths", torch.tensor(lengths if lengths is not None
                                                     else [1.0] * len(parents)))
        ancestor_matrix(self.parents)  # validate now

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        B, C = logits.shape
        K = len(self.parents)
        p = torch.zeros(B, K, dtype=logits.dtype, device=logits.device)
        p = torch.cat([logits.softmax(-1), p[:, C:]], dim=1)
        q = torch.zeros_like(p).scatter_(1, labels[:, None], 1.0)
        return tree_emd(p, q, self.parents, self.lengths, self.rho).mean()


def load_class_tree(path: str, classes: Sequence[str], rho: float = 2.0) -> TreeEMDLoss:
    """A TreeEMDLoss over ``classes`` from a JSON file ``{"nodes": [names], "parents":
    [index of each node's parent, -1 for the root], "lengths": [edge length per node]
    (optional, default 1)}``; every class must be a node."""
    import json
    import os

    if not os.path.isfile(path):
        raise ConfigError(f"pretrain.class_tree {path!r} does not exist")
    try:
        with open(path) as f:
            spec = json.load(f)
        nodes, parents = list(spec["nodes"]), [int(x) for x in spec["parents"]]
        lengths = [float(x) for x in spec.get("lengths", [1.0] * len(nodes))]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"pretrain.class_tree {path!r}: expected JSON with 'nodes' and "
                          f"'parents' lists ({e})") from None
    if not len(nodes) == len(parents) == len(lengths):
        raise ConfigError(f"pretrain.class_tree {path!r}: nodes, parents and lengths differ in length")
    missing = [c for c in classes if c not in nodes]
    if missing:
        raise ConfigError(f"pretrain.class_tree {path!r}: classes {missing[:3]} are not nodes")
    # put the classes first (in label order) and renumber the parents
    order = [nodes.index(c) for c in classes] + [i for i, n in enumerate(nodes) if n not in set(classes)]
    new_index = {old: new for new, old in enumerate(order)}
    return TreeEMDLoss([new_index[parents[o]] if parents[o] >= 0 else -1 for o in order],
                       [lengths[o] for o in order], rho=rho)
