"""``tree``: closed-form EMD on a tree built from the cost matrix (Martinez et al. 2016).

The M + N nodes of each problem are joined by the minimum spanning tree of the
bipartite graph whose edge lengths are ``cost`` (batched Prim). With node masses
m = (a, -b) and S_v the total mass of the subtree under node v, the value is

    value = sum over tree edges (v, parent v) of length_v * |S_v|^rho.

rho = 1 is the exact EMD under the tree metric (path lengths in the tree); rho = 2 is
the relaxed EMD^2. The value is that closed form, another quantity than the cost of
the returned plan under ``cost``, and no bound of the exact EMD under ``cost``: when
``cost`` obeys the triangle inequality on the bipartite graph (a metric between the
nodes) tree paths are no shorter than direct costs and the value is an upper bound,
but for other costs (DeepEMD's 1 - cos, or [[0.9, 0.1], [0.1, 0.1]]) a tree path can
be shorter and the value falls below the optimum. ``info["plan_cost"]`` [B] (with
``return_plan``) is the cost <plan, cost> of the returned feasible plan, always an
upper bound of the exact EMD. Several random trees
(``n_trees`` > 1: Prim started from random roots on jittered costs) are averaged:
the tree-sliced variant. The plan is the optimal tree flow mapped back to node pairs
(each edge carries only the net imbalance |S_v|, in one direction).

Differentiation: autograd through the closed form (the tree structure is fixed by
the forward pass): d value / d cost is |S_v|^rho on the tree edges, and the
gradients for ``a`` and ``b`` are projected to sum to zero, the dirt-conserving
gradient of the paper (eq. 11/15). The plan carries no gradient.
"""
from __future__ import annotations

import torch

from ._problem import EMDResult
from ._solver import Option, SolverSpec


class _ZeroSum(torch.autograd.Function):
    """Identity whose gradient is projected onto {g : sum(g) = 0} along the last axis."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad - grad.mean(-1, keepdim=True)


def bipartite_mst(cost: torch.Tensor, root: torch.Tensor):
    """Minimum spanning trees of the bipartite graphs with edge lengths cost [B, M, N].

    root [B]: the start node of each tree (0..M+N-1; left nodes first).
    Returns parent [B, V] (root: itself) and order [B, V] (insertion order, root first)."""
    B, M, N = cost.shape
    V = M + N
    dev = cost.device
    c = cost.detach()
    inf = torch.tensor(float("inf"), dtype=c.dtype, device=dev)
    arange = torch.arange(B, device=dev)
    in_tree = torch.zeros(B, V, dtype=torch.bool, device=dev)
    best = torch.full((B, V), float("inf"), dtype=c.dtype, device=dev)
    best_from = torch.zeros(B, V, dtype=torch.long, device=dev)
    parent = torch.zeros(B, V, dtype=torch.long, device=dev)
    order = torch.zeros(B, V, dtype=torch.long, device=dev)

    def add(v, frm):
        in_tree[arange, v] = True
        parent[arange, v] = frm
        left = v < M
        row = c[arange, v.clamp(max=M - 1)]              # [B, N]: v as a left node
        col = c[arange, :, (v - M).clamp(min=0)]         # [B, M]: v as a right node
        new = torch.cat([torch.where(left[:, None], inf, col), torch.where(left[:, None], row, inf)], 1)
        better = (new < best) & ~in_tree
        best.copy_(torch.where(better, new, best))
        best_from.copy_(torch.where(better, v[:, None].expand(-1, V), best_from))

    add(root, root)
    order[:, 0] = root
    for step in range(1, V):
        v = best.masked_fill(in_tree, float("inf")).argmin(1)
        add(v, best_from[arange, v])
        order[:, step] = v
    return parent, order


def _tree_value(cost, a, b, parent, order, rho):
    """value [B], subtree masses S [B, V], edge lengths [B, V] (root: 0)."""
    B, M, N = cost.shape
    V = M + N
    dev = cost.device
    arange = torch.arange(B, device=dev)
    # ancestor-or-self matrix, filled in insertion order (parents before children)
    anc = torch.zeros(B, V, V, dtype=cost.dtype, device=dev)
    anc[arange, order[:, 0], order[:, 0]] = 1
    for step in range(1, V):
        v = order[:, step]
        anc[arange, v] = anc[arange, parent[arange, v]]
        anc[arange, v, v] = 1
    mass = torch.cat([_ZeroSum.apply(a), -_ZeroSum.apply(b)], dim=1)      # [B, V]
    S = torch.einsum("buv,bu->bv", anc, mass)                              # subtree sums
    nodes = torch.arange(V, device=dev).expand(B, V)
    i = torch.where(nodes < M, nodes, parent)            # left endpoint of edge (v, parent v)
    j = torch.where(nodes < M, parent, nodes) - M        # right endpoint
    is_root = nodes == order[:, :1]
    flat = cost.reshape(B, M * N).gather(1, (i.clamp(0, M - 1) * N + j.clamp(0, N - 1)))
    length = torch.where(is_root, torch.zeros_like(flat), flat)
    value = (length * S.abs().pow(rho)).sum(1)
    return value, S


def _tree_plan(a, b, parent, order, M):
    """Optimal tree flow mapped to node pairs: leaves upwards, each node matches the
    supplies and demands that reach it and passes the remainder to its parent."""
    B, V = parent.shape
    N = V - M
    plan = torch.zeros(B, M, N, dtype=torch.float64)
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    parent, order = parent.cpu().tolist(), order.cpu().tolist()
    for p in range(B):
        pending = [None] * V
        for v in range(V):
            pending[v] = ([(v, float(a64[p, v]))], []) if v < M else ([], [(v - M, float(b64[p, v - M]))])
        for v in reversed(order[p]):
            supplies, demands = pending[v]
            si = di = 0
            supplies = [list(s) for s in supplies]
            demands = [list(d) for d in demands]
            while si < len(supplies) and di < len(demands):
                amount = min(supplies[si][1], demands[di][1])
                plan[p, supplies[si][0], demands[di][0]] += amount
                supplies[si][1] -= amount
                demands[di][1] -= amount
                if supplies[si][1] <= 0:
                    si += 1
                if demands[di][1] <= 0:
                    di += 1
            rest = ([tuple(s) for s in supplies[si:] if s[1] > 0], [tuple(d) for d in demands[di:] if d[1] > 0])
            u = parent[p][v]
            if u != v:
                pending[u] = (pending[u][0] + rest[0], pending[u][1] + rest[1])
    return plan


def solve_tree(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, rho: float = 1.0,
               n_trees: int = 1, seed: int = 0, return_plan: bool = True) -> EMDResult:
    """Tree EMD^rho of cost [B, M, N], a [B, M], b [B, N]; see the module docstring."""
    B, M, N = cost.shape
    gen = torch.Generator().manual_seed(seed)
    values, plans = [], []
    for t in range(n_trees):
        if t == 0:
            root = torch.zeros(B, dtype=torch.long, device=cost.device)
            structure = cost
        else:
            root = torch.randint(0, M + N, (B,), generator=gen).to(cost.device)
            noise = torch.rand(cost.shape, generator=gen, dtype=torch.float64).to(cost.device, cost.dtype)
            structure = cost.detach() * (0.5 + noise)  # a random tree that still prefers short edges
        parent, order = bipartite_mst(structure, root)
        value, _ = _tree_value(cost, a, b, parent, order, rho)
        values.append(value)
        if return_plan:
            plans.append(_tree_plan(a, b, parent, order, M))
    value = torch.stack(values).mean(0)
    if return_plan:
        plan = torch.stack(plans).mean(0).to(device=cost.device, dtype=cost.dtype)
    else:
        plan = torch.zeros_like(cost)
    info = {"rho": rho, "n_trees": n_trees}
    if return_plan:
        info["plan_cost"] = (plan * cost.detach()).sum((1, 2))
    return EMDResult(plan=plan, value=value, solver="tree", info=info)


SPEC = SolverSpec(
    solve_tree,
    {"rho": Option(1.0, float, low=1), "n_trees": Option(1, int, low=1),
     "seed": Option(0, int, low=0), "return_plan": Option(True, bool)},
    differentiation="autograd through the closed form on the fixed tree; gradients for a and b "
                    "projected to sum to zero (dirt-conserving); the plan carries no gradient")
