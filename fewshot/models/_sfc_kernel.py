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
P -= lr * buf) while it is in cache, so the gradient is never stored.
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
def sgd_step(nodes, buf, xhat, xsum, plan, cost, weight, inv_norm, ga, gb,
             decay, momentum, alpha, lr, first):  # pragma: no cover (compiled)
    """In place: nodes [E, W, N, C] (the prototypes), buf [E, W, N, C] (the momentum buffer),
    from xhat [E, k, M, C], xsum [E, k, C], plan and cost [E, k, W, M, N], weight [E, k, W],
    inv_norm [E, W, N], ga [E, k, W, M], gb [E, k, W, N]; scalars of the arrays' dtype
    (``decay``: the weight decay, added to scale); ``first``: buf = grad."""
    E, W, N, C = nodes.shape
    k, M = xhat.shape[1], xhat.shape[2]
    for ew in prange(E * W):
        e = ew // W
        w = ew % W
        common = np.zeros(C, nodes.dtype)              # sum_k,i ga_kwi xhat_ki
        for kk in range(k):
            for i in range(M):
                coef = ga[e, kk, w, i]
                if coef != 0:
                    x = xhat[e, kk, i]
                    for c in range(C):
                        common[c] += coef * x[c]
        grad = np.empty(C, nodes.dtype)
        scale = np.empty(1, nodes.dtype)
        for j in range(N):
            p = nodes[e, w, j]
            rho = 0.0
            for kk in range(k):
                for i in range(M):
                    flow = plan[e, kk, w, i, j]
                    if flow != 0:
                        rho += weight[e, kk, w] * flow * (1 - cost[e, kk, w, i, j])
            scale[0] = decay - rho * inv_norm[e, w, j] * inv_norm[e, w, j]
            s = scale[0]                               # in the arrays' dtype
            for c in range(C):
                grad[c] = common[c] + s * p[c]
            for kk in range(k):
                coef = gb[e, kk, w, j]
                x = xsum[e, kk]
                for c in range(C):
                    grad[c] += coef * x[c]
                wj = weight[e, kk, w] * inv_norm[e, w, j]
                for i in range(M):
                    flow = plan[e, kk, w, i, j]
                    if flow != 0:
                        coef = wj * flow
                        x = xhat[e, kk, i]
                        for c in range(C):
                            grad[c] += coef * x[c]
            q = buf[e, w, j]
            if first:
                for c in range(C):
                    q[c] = grad[c]
            else:
                for c in range(C):
                    q[c] = momentum * q[c] + alpha * grad[c]
            for c in range(C):
                p[c] -= lr * q[c]
