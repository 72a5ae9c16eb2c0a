"""The Structured FC step on the CPU, compiled with numba: the problems of a step from the
products of the support and prototype nodes (:func:`problems`), and the SGD update from the
closed-form gradient (:func:`sgd_step`), each parallel over episodes.

The closed-form gradient of a prototype node P_wj (:func:`fewshot.models.deepemd.sfc_gradient`)
is a combination of the chunk's support nodes:

    grad_wj = sum_k,i (weight_kw inv_norm_wj plan_kwij + ga_kwi) xhat_ki
              + sum_k gb_kwj xsum_k + scale_wj P_wj,
    scale_wj = -inv_norm_wj^2 sum_k,i weight_kw plan_kwij (1 - cost_kwij)

(the multiple of the vector of ones is applied by the caller). An optimal basic plan has at
most M + N - 1 nonzeros of M * N, so the plan term is read sparsely: about 2 M * N / (M + N)
times fewer multiply-adds than the dense product coeffs @ xhat. The sum over i of ga does not
depend on j and is formed once per (episode, class). Each prototype row is then updated as
``torch.optim.SGD`` does (buf = grad on the first step, else momentum * buf + alpha * grad;
P -= lr * buf) while it is in cache, so the gradient is never stored, and its norm (the next
step's cosine cost needs it) taken on the way.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..emd import _simplex  # noqa: F401  (numba's threading layer is chosen there)


@njit(cache=True, parallel=True)
def problems(dot, norm, nu, mu, mean, cost, z_a, z_b):  # pragma: no cover (compiled)
    """From dot [E, k, M, W, N] (<xhat_i, P_j>), norm [E, W, N] (|P_j|), nu, mu
    [E, k, M] and mean [E, W, N] (the channel means of P times C; zeros without centring),
    fill cost [E, k, W, M, N] = 1 - dot / |P_j| and the cross-reference weights' arguments
    z_a [E, k, W, M], z_b [E, k, W, N]: the means over j and over i of <x_i, P_j> =
    nu_i dot_ij + mu_i mean_j."""
    E, k, M, W, N = dot.shape
    for ek in prange(E * k):
        e = ek // k
        kk = ek % k
        for w in range(W):
            for j in range(N):
                z_b[e, kk, w, j] = 0
            for i in range(M):
                za = 0.0
                for j in range(N):
                    d = dot[e, kk, i, w, j]
                    cost[e, kk, w, i, j] = 1 - d / norm[e, w, j]
                    xp = nu[e, kk, i] * d + mu[e, kk, i] * mean[e, w, j]
                    za += xp
                    z_b[e, kk, w, j] += xp
                z_a[e, kk, w, i] = za / N
            for j in range(N):
                z_b[e, kk, w, j] /= M


@njit(cache=True, parallel=True, fastmath=True)
def sgd_step(nodes, buf, norm, xhat, xsum, plan, cost, weight, inv_norm, ga, gb,
             decay, momentum, alpha, lr, first):  # pragma: no cover (compiled)
    """In place: nodes [E, W, N, C] (the prototypes), buf [E, W, N, C] (the momentum buffer)
    and norm [E, W, N] (the updated nodes' norms, at least 1e-12), from xhat [E, k, M, C],
    xsum [E, k, C], plan and cost [E, k, W, M, N], weight [E, k, W], inv_norm [E, W, N],
    ga [E, k, W, M], gb [E, k, W, N]; scalars of the arrays' dtype (``decay``: the weight
    decay, added to scale); ``first``: buf = grad. Terms are added two at a time (half the
    loads and stores of the row being summed)."""
    E, W, N, C = nodes.shape
    k, M = xhat.shape[1], xhat.shape[2]
    for ew in prange(E * W):
        e = ew // W
        w = ew % W
        # the plan's nonzeros of this (episode, class), grouped by prototype node j
        start = np.zeros(N + 1, np.int64)
        for kk in range(k):
            for i in range(M):
                for j in range(N):
                    if plan[e, kk, w, i, j] != 0:
                        start[j + 1] += 1
        for j in range(N):
            start[j + 1] += start[j]
        fill = start[:N].copy()
        src = np.empty(start[N], np.int64)             # kk * M + i
        flow = np.empty(start[N], nodes.dtype)
        sim = np.empty(start[N], nodes.dtype)          # 1 - cost
        for kk in range(k):
            for i in range(M):
                for j in range(N):
                    x = plan[e, kk, w, i, j]
                    if x != 0:
                        t = fill[j]
                        src[t] = kk * M + i
                        flow[t] = x
                        sim[t] = 1 - cost[e, kk, w, i, j]
                        fill[j] += 1
        rows = xhat[e].reshape((k * M, C))
        common = np.zeros(C, nodes.dtype)              # sum_k,i ga_kwi xhat_ki
        for kk in range(k):
            for i in range(0, M - 1, 2):
                c1 = ga[e, kk, w, i]
                c2 = ga[e, kk, w, i + 1]
                x1 = rows[kk * M + i]
                x2 = rows[kk * M + i + 1]
                for c in range(C):
                    common[c] += c1 * x1[c] + c2 * x2[c]
            if M % 2:
                c1 = ga[e, kk, w, M - 1]
                x1 = rows[kk * M + M - 1]
                for c in range(C):
                    common[c] += c1 * x1[c]
        grad = np.empty(C, nodes.dtype)
        scale = np.empty(1, nodes.dtype)
        for j in range(N):
            p = nodes[e, w, j]
            rho = 0.0
            for t in range(start[j], start[j + 1]):
                rho += weight[e, src[t] // M, w] * flow[t] * sim[t]
            scale[0] = decay - rho * inv_norm[e, w, j] * inv_norm[e, w, j]
            s = scale[0]                               # in the arrays' dtype
            for c in range(C):
                grad[c] = common[c] + s * p[c]
            for kk in range(0, k - 1, 2):
                c1 = gb[e, kk, w, j]
                c2 = gb[e, kk + 1, w, j]
                x1 = xsum[e, kk]
                x2 = xsum[e, kk + 1]
                for c in range(C):
                    grad[c] += c1 * x1[c] + c2 * x2[c]
            if k % 2:
                c1 = gb[e, k - 1, w, j]
                x1 = xsum[e, k - 1]
                for c in range(C):
                    grad[c] += c1 * x1[c]
            t = start[j]
            while t + 1 < start[j + 1]:
                c1 = weight[e, src[t] // M, w] * inv_norm[e, w, j] * flow[t]
                c2 = weight[e, src[t + 1] // M, w] * inv_norm[e, w, j] * flow[t + 1]
                x1 = rows[src[t]]
                x2 = rows[src[t + 1]]
                for c in range(C):
                    grad[c] += c1 * x1[c] + c2 * x2[c]
                t += 2
            if t < start[j + 1]:
                c1 = weight[e, src[t] // M, w] * inv_norm[e, w, j] * flow[t]
                x1 = rows[src[t]]
                for c in range(C):
                    grad[c] += c1 * x1[c]
            q = buf[e, w, j]
            sq = 0.0
            if first:
                for c in range(C):
                    q[c] = grad[c]
            else:
                for c in range(C):
                    q[c] = momentum * q[c] + alpha * grad[c]
            for c in range(C):
                p[c] -= lr * q[c]
                sq += p[c] * p[c]
            norm[e, w, j] = max(np.sqrt(sq), 1e-12)
