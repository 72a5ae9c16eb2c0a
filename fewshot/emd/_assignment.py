"""The ``exact`` solver's ``assignment`` engine: uniform, equal-size problems as assignments.

When M == N and every a_i and every b_j of a problem are equal (two point clouds of N points
with uniform weights), the transport LP has an optimal plan that is a permutation scaled by
a_i (Birkhoff-von Neumann), and its optimum is the assignment problem solved by scipy's
``linear_sum_assignment`` (shortest augmenting paths, O(N^3) worst case, much faster than a
general network simplex on these problems up to several hundred points).

``linear_sum_assignment`` gives no duals, and the solver promises them (d value / d a = f,
d value / d b = g). They are recovered from the optimal assignment sigma: the duals
(u, v) with u_i + v_j <= cost_ij and equality on the matched cells are, for v, shortest-path
distances in the graph on the columns with arcs j -> k of length
cost[sigma^-1(j), k] - cost[sigma^-1(j), j] (moving the row matched to j over to k); the
graph has no negative cycle because the assignment is optimal, so a label-correcting
search (compiled with numba) from a virtual source at distance 0 finds them, and
u_i = cost_i,sigma(i) - v_sigma(i). With masses a_i = m / N the LP's duals are (u, v)
themselves and its value is (m / N) * sum_i cost_i,sigma(i).
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _column_potentials(cost: np.ndarray, row_of: np.ndarray) -> np.ndarray:
    """v [N]: shortest distances from a virtual source over arcs j -> k of length
    cost[row_of[j], k] - cost[row_of[j], j] (label-correcting, FIFO queue)."""
    n = cost.shape[0]
    v = np.zeros(n)
    queued = np.ones(n, dtype=np.bool_)
    queue = np.arange(n)
    head, size = 0, n
    ring = np.empty(n, dtype=np.int64)
    ring[:] = queue
    while size > 0:
        j = ring[head]
        head = (head + 1) % n
        size -= 1
        queued[j] = False
        r = row_of[j]
        base = v[j] - cost[r, j]
        for k in range(n):
            d = base + cost[r, k]
            if d < v[k] - 1e-12 * (abs(v[k]) + 1.0):
                v[k] = d
                if not queued[k]:
                    queued[k] = True
                    ring[(head + size) % n] = k
                    size += 1
    return v


def solve_assignment(cost: np.ndarray, a: np.ndarray, b: np.ndarray):
    """cost [B, N, N], a [B, N], b [B, N] with equal weights within each a and b:
    plan (cost's dtype), value, f, g (float64), in the conventions of the other engines (b
    scaled to a's mass)."""
    from scipy.optimize import linear_sum_assignment

    B, N, _ = cost.shape
    plan = np.zeros(cost.shape, cost.dtype)
    value, f, g = np.empty(B), np.empty((B, N)), np.empty((B, N))
    for i in range(B):
        c = np.asarray(cost[i], np.float64)
        scale = np.abs(c).max() or 1.0                     # duals found in units of the largest cost
        rows, cols = linear_sum_assignment(c)
        row_of = np.empty(N, np.int64)
        row_of[cols] = rows
        v = _column_potentials(c / scale, row_of) * scale
        u = c[rows, cols] - v[cols]
        mass = float(a[i].sum())
        plan[i, rows, cols] = mass / N
        value[i] = mass / N * c[rows, cols].sum()
        f[i], g[i] = u, v
    return plan, value, f, g
