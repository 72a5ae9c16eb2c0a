"""The closed-form tree EMD^rho on the CPU, compiled with numba, parallel over histogram pairs.

The same formula as :class:`fewshot.emd.hierarchy._TreeEMD` (see that module's docstring), read
row by row instead of as products with the sparse ancestor matrix: with ``order`` listing the
nodes parents first,

* forward: S = p - q (with the input checks' sums, minima and non-finite counts on the way),
  then for the nodes in reverse order S[parent v] += S[v] (subtree sums),
  value = sum_v length_v |S_v|^rho, and the weights w_v = length_v rho |S_v|^(rho-1) sign(S_v)
  kept for the backward pass (in the buffer that held S);
* backward: G[root] = w[root], then in order G[v] = w[v] + G[parent v] (sums over the ancestors),
  centred over the first ``n_bins`` nodes (the dirt-conserving projection over the bins that
  hold mass; all K nodes for a histogram on the whole tree) and scaled by the incoming gradient.

O(K) per pair with one pass over a row in cache; no [K, B] transposes.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _simplex  # noqa: F401  (numba's threading layer is chosen there)


@njit(cache=True, parallel=True)
def forward(p, q, order, parent, lengths, rho, value, weights, stats):  # pragma: no cover (compiled)
    """value [B] and weights [B, K] from p, q [B, K], filled in place, and per pair the input
    checks' numbers in the same pass: stats [B, 6] = sum p, sum q, min p, min q and the counts
    of non-finite entries of p and of q."""
    B, K = p.shape
    for b in prange(B):
        s = weights[b]
        sp = 0.0
        sq = 0.0
        lp = np.inf
        lq = np.inf
        bad_p = 0
        bad_q = 0
        for v in range(K):
            x = p[b, v]
            y = q[b, v]
            if not np.isfinite(x):
                bad_p += 1
            if not np.isfinite(y):
                bad_q += 1
            sp += x
            sq += y
            lp = min(lp, x)
            lq = min(lq, y)
            s[v] = x - y
        stats[b, 0] = sp
        stats[b, 1] = sq
        stats[b, 2] = lp
        stats[b, 3] = lq
        stats[b, 4] = bad_p
        stats[b, 5] = bad_q
        for i in range(K - 1, 0, -1):
            v = order[i]
            s[parent[v]] += s[v]
        total = 0.0
        for v in range(K):
            x = s[v]
            length = lengths[v]
            if rho == 1.0:
                total += length * abs(x)
                s[v] = length * np.sign(x)
            elif rho == 2.0:
                total += length * x * x
                s[v] = 2.0 * length * x
            else:
                m = abs(x)
                total += length * m ** rho
                s[v] = length * rho * m ** (rho - 1.0) * np.sign(x)
        value[b] = total


@njit(cache=True, parallel=True)
def backward(weights, order, parent, grad_value, n_bins, grad):  # pragma: no cover (compiled)
    """grad [B, K] (filled in place): path sums of ``weights``, centred over the first ``n_bins``
    nodes, times grad_value [B]."""
    B, K = weights.shape
    for b in prange(B):
        g = grad[b]
        w = weights[b]
        root = order[0]
        g[root] = w[root]
        for i in range(1, K):
            v = order[i]
            g[v] = w[v] + g[parent[v]]
        total = 0.0                      # float64 sum, also for float32 rows
        for v in range(n_bins):
            total += g[v]
        mean = total / n_bins
        scale = grad_value[b]
        for v in range(K):
            g[v] = (g[v] - mean) * scale
