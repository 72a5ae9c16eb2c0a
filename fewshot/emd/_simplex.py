"""Batched transportation simplex, compiled with numba and parallel over problems.

The engine behind the ``exact`` solver: for each problem of a batch it solves

    min_plan <cost, plan>   s.t.  plan 1 = a,  plan^T 1 = b,  plan >= 0

by the primal simplex method on the spanning-tree basis of the bipartite graph
(the transportation / "MODI" form of the network simplex):

1. start: the matrix-minimum rule (cells in order of increasing cost, each
   allocation crosses out one exhausted row or column), which gives a basic
   feasible tree of M + N - 1 cells close to the optimum;
2. duals: u_i + v_j = cost_ij on the tree (u_0 = 0), by one traversal that also
   roots the tree (parent arc and depth of every node);
3. pricing by block search: rows are scanned round-robin from where the last scan
   stopped, and the most negative reduced cost cost_ij - u_i - v_j of the first block
   of rows that has one enters; a full scan with none below -tol means optimal;
4. pivot: the entering cell closes one cycle (the tree paths of its row and column
   up to their common ancestor); the flow moves around it, the first blocking cell
   leaves, and only the subtree cut off by the leaving cell is walked again (re-hung
   on the entering cell, its duals shifted by the entering reduced cost).

Every problem runs in one compiled call with no Python in the loop: it is read in its
own dtype (float32 or float64), converted to float64 and divided by its largest |cost|
there, and its plan written back in that dtype; the problems of a block share one
workspace (no allocation per problem). Batches of at
least ``PARALLEL_MIN_BATCH`` problems are spread over all cores with ``numba.prange``
(``NUMBA_NUM_THREADS``; numba's work-queue threading layer unless
``NUMBA_THREADING_LAYER`` says otherwise). A problem that does not reach the
optimum in ``max_iter`` pivots reports code 0 and the caller re-solves it with
POT's network simplex. ``code`` is 1 on success, as in POT.
"""
from __future__ import annotations

import os

import numpy as np
import numba
from numba import njit, prange

# numba's OpenMP layer keeps its threads spinning after a parallel region, which starves
# torch's own threads between EMD calls; the work-queue layer does not.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"


@njit(cache=True, nogil=True)
def _row_min(cost, i, col_out):  # pragma: no cover (compiled)
    best = np.inf
    arg = -1
    for j in range(cost.shape[1]):
        if not col_out[j] and cost[i, j] < best:
            best = cost[i, j]
            arg = j
    return best, arg


@njit(cache=True, nogil=True)
def _matrix_minimum(cost, a, b, arc_r, arc_c, arc_x):  # pragma: no cover (compiled)
    """Matrix-minimum start: allocate the cheapest open cell, cross out one exhausted line.

    Never crossing the last open row or column keeps the M + N - 1 cells a spanning
    tree. The cheapest open cell is found through each open row's cheapest open
    column, recomputed only for the rows whose column was crossed out (no sort).
    """
    M, N = cost.shape
    K = M + N - 1
    ra = a.copy()
    rb = b.copy()
    row_out = np.zeros(M, np.bool_)
    col_out = np.zeros(N, np.bool_)
    rmin = np.empty(M)
    rarg = np.empty(M, np.int64)
    for i in range(M):
        rmin[i], rarg[i] = _row_min(cost, i, col_out)
    rows_left = M
    cols_left = N
    for k in range(K):
        i = -1
        best = np.inf
        for r in range(M):
            if not row_out[r] and rmin[r] < best:
                best = rmin[r]
                i = r
        if i < 0:
            return k
        j = rarg[i]
        x = min(ra[i], rb[j])
        arc_r[k] = i
        arc_c[k] = j
        arc_x[k] = x
        ra[i] -= x
        rb[j] -= x
        if k == K - 1:
            return K
        if (ra[i] <= rb[j] and rows_left > 1) or cols_left == 1:
            row_out[i] = True
            rows_left -= 1
        else:
            col_out[j] = True
            cols_left -= 1
            for r in range(M):
                if not row_out[r] and rarg[r] == j:
                    rmin[r], rarg[r] = _row_min(cost, r, col_out)
    return K


@njit(cache=True, nogil=True)
def _unlink(node, arc, adj, deg):  # pragma: no cover (compiled)
    for s in range(deg[node]):
        if adj[node, s] == arc:
            deg[node] -= 1
            adj[node, s] = adj[node, deg[node]]
            return


@njit(cache=True, nogil=True)
def _hang(top, shift, cost, arc_r, arc_c, adj, deg, parent, depth, u, v, queue, M):  # pragma: no cover
    """Walk the subtree below ``top`` (whose parent arc and depth are set): set parent arcs
    and depths, and the duals from the arcs' costs (``top``'s own dual is moved by ``shift``,
    the duals below follow from u_i + v_j = cost_ij). Returns the node count."""
    if top < M:
        u[top] += shift
    else:
        v[top - M] += shift
    queue[0] = top
    head = 0
    tail = 1
    while head < tail:
        n = queue[head]
        head += 1
        for s in range(deg[n]):
            e = adj[n, s]
            if e == parent[n]:
                continue
            if n < M:
                m = M + arc_c[e]
                v[arc_c[e]] = cost[n, arc_c[e]] - u[n]
            else:
                m = arc_r[e]
                u[m] = cost[m, n - M] - v[n - M]
            parent[m] = e
            depth[m] = depth[n] + 1
            queue[tail] = m
            tail += 1
    return tail


@njit(cache=True, nogil=True)
def _basic_flows(a, b, arc_r, arc_c, arc_x, tol, rest, deg, incident, stack):  # pragma: no cover
    """The flows of the basis (arc_r, arc_c) for marginals a, b, by peeling leaves off the
    tree (a leaf's one arc carries its remaining mass). False when the arcs are not a
    spanning tree or a flow is negative (the basis is not feasible for these marginals).
    rest [M + N] (float), deg, incident, stack [M + N] (int): workspace."""
    M = a.shape[0]
    N = b.shape[0]
    K = M + N - 1
    n_nodes = M + N
    rest[:M] = a
    rest[M:] = b
    deg[:] = 0
    incident[:] = 0                             # sum of incident arc ids (the last one's id)
    for e in range(K):
        r = arc_r[e]
        c = arc_c[e]
        if r < 0 or r >= M or c < 0 or c >= N:
            return False
        deg[r] += 1
        deg[M + c] += 1
        incident[r] += e
        incident[M + c] += e
    top = 0
    for n in range(n_nodes):
        if deg[n] == 1:
            stack[top] = n
            top += 1
        elif deg[n] == 0:
            return False
    done = 0
    while top > 0:
        top -= 1
        n = stack[top]
        if deg[n] != 1:
            continue
        e = incident[n]
        x = rest[n]
        if x < -tol:
            return False
        arc_x[e] = max(x, 0.0)
        m = M + arc_c[e] if n < M else arc_r[e]
        rest[n] = 0.0
        rest[m] -= x
        deg[n] = 0
        deg[m] -= 1
        incident[m] -= e
        done += 1
        if deg[m] == 1:
            stack[top] = m
            top += 1
    return done == K


@njit(cache=True, nogil=True)
def _workspace(M, N):  # pragma: no cover (compiled)
    """Integer and float workspace for one problem of M x N at a time (see _solve_one)."""
    K = M + N - 1
    n_nodes = M + N
    return np.empty(2 * K + n_nodes * (max(M, N) + 8), np.int64), np.empty(M * N + M + N + K + n_nodes)


@njit(cache=True, nogil=True)
def _solve_one(cost, a, b, plan, u, v, max_iter, tol, basis_r, basis_c, warm,
               iwork, fwork):  # pragma: no cover (compiled)
    M, N = cost.shape
    K = M + N - 1
    n_nodes = M + N
    max_deg = max(M, N)
    arc_r = iwork[:K]
    arc_c = iwork[K:2 * K]
    o = 2 * K
    adj = iwork[o:o + n_nodes * max_deg].reshape((n_nodes, max_deg))
    o += n_nodes * max_deg
    deg = iwork[o:o + n_nodes]
    parent = iwork[o + n_nodes:o + 2 * n_nodes]
    depth = iwork[o + 2 * n_nodes:o + 3 * n_nodes]
    queue = iwork[o + 3 * n_nodes:o + 4 * n_nodes]
    path_p = iwork[o + 4 * n_nodes:o + 5 * n_nodes]
    path_q = iwork[o + 5 * n_nodes:o + 6 * n_nodes]
    scratch = iwork[o + 6 * n_nodes:o + 7 * n_nodes]
    arc_x = fwork[:K]

    # 1. start from the given basis where it is a feasible tree for these marginals (a warm
    #    start), else from the matrix-minimum basic solution
    started = False
    if warm:
        arc_r[:] = basis_r
        arc_c[:] = basis_c
        started = _basic_flows(a, b, arc_r, arc_c, arc_x, 1e-12 * (a.sum() + 1.0), fwork[K:K + n_nodes],
                               deg, queue, scratch)
    if not started and _matrix_minimum(cost, a, b, arc_r, arc_c, arc_x) < K:
        return 0, 0, 0.0

    # the basis tree: adjacency lists (arc ids), parent arc and depth below the root (row 0)
    deg[:] = 0
    for e in range(K):
        r = arc_r[e]
        c = M + arc_c[e]
        adj[r, deg[r]] = e
        deg[r] += 1
        adj[c, deg[c]] = e
        deg[c] += 1

    # 2. duals on the tree: one traversal from the root; afterwards only the subtree that
    #    moves in a pivot is visited again
    parent[0] = -1
    depth[0] = 0
    u[0] = 0.0
    if _hang(0, 0.0, cost, arc_r, arc_c, adj, deg, parent, depth, u, v, queue, M) < n_nodes:
        return 0, 0, 0.0                      # not a spanning tree: let the caller re-solve

    code = 0
    it = 0
    row_ptr = 0
    block_rows = max(1, int(np.sqrt(M)) // 2)
    while it <= max_iter:
        # 3. pricing by block search: scan rows from where the last scan stopped and take
        #    the most negative reduced cost of the first block of rows that has one
        best = -tol
        p = -1
        q = -1
        scanned = 0
        while scanned < M:
            i = row_ptr
            row_ptr = row_ptr + 1 if row_ptr + 1 < M else 0
            scanned += 1
            ui = u[i]
            for j in range(N):
                red = cost[i, j] - ui - v[j]
                if red < best:
                    best = red
                    p = i
                    q = j
            if p >= 0 and scanned % block_rows == 0:
                break
        if p < 0:
            code = 1
            break
        if it == max_iter:
            break
        it += 1

        # 4. the cycle: tree paths from row p and from column q up to their common ancestor
        x = p
        y = M + q
        lp = 0
        lq = 0
        while depth[x] > depth[y]:
            e = parent[x]
            path_p[lp] = e
            lp += 1
            x = arc_r[e] if x >= M else M + arc_c[e]
        while depth[y] > depth[x]:
            e = parent[y]
            path_q[lq] = e
            lq += 1
            y = arc_r[e] if y >= M else M + arc_c[e]
        while x != y:
            e = parent[x]
            path_p[lp] = e
            lp += 1
            x = arc_r[e] if x >= M else M + arc_c[e]
            e = parent[y]
            path_q[lq] = e
            lq += 1
            y = arc_r[e] if y >= M else M + arc_c[e]
        # along the path p -> q the arcs alternate -, +, -, ..., -: on each half the
        # arcs at even positions (counted from p, resp. from q) lose flow
        theta = np.inf
        leave = -1
        leave_on_p = True
        for s in range(0, lp, 2):
            e = path_p[s]
            if arc_x[e] < theta:
                theta = arc_x[e]
                leave = e
        for s in range(0, lq, 2):
            e = path_q[s]
            if arc_x[e] < theta:
                theta = arc_x[e]
                leave = e
                leave_on_p = False
        for s in range(lp):
            e = path_p[s]
            arc_x[e] += -theta if s % 2 == 0 else theta
        for s in range(lq):
            e = path_q[s]
            arc_x[e] += -theta if s % 2 == 0 else theta

        # the leaving arc cuts off the subtree below it, which holds p (leave_on_p) or q;
        # the entering arc (p, q) takes the leaving arc's slot and re-hangs that subtree
        _unlink(arc_r[leave], leave, adj, deg)
        _unlink(M + arc_c[leave], leave, adj, deg)
        arc_r[leave] = p
        arc_c[leave] = q
        arc_x[leave] = theta
        adj[p, deg[p]] = leave
        deg[p] += 1
        adj[M + q, deg[M + q]] = leave
        deg[M + q] += 1
        if leave_on_p:                        # u_p += red keeps u_p + v_q = cost_pq
            t, w = p, M + q
        else:                                 # v_q += red
            t, w = M + q, p
        parent[t] = leave
        depth[t] = depth[w] + 1
        _hang(t, best, cost, arc_r, arc_c, adj, deg, parent, depth, u, v, queue, M)

    plan[:, :] = 0.0
    value = 0.0
    for e in range(K):
        x = max(arc_x[e], 0.0)
        plan[arc_r[e], arc_c[e]] += x
        value += cost[arc_r[e], arc_c[e]] * x
    basis_r[:] = arc_r
    basis_c[:] = arc_c
    return code, it, value


@njit(cache=True, nogil=True)
def _outputs(cost):  # pragma: no cover (compiled)
    B, M, N = cost.shape
    return (np.empty((B, M, N), cost.dtype), np.empty(B), np.empty((B, M)), np.empty((B, N)),
            np.empty(B, np.int64), np.empty(B, np.int64))


@njit(cache=True, nogil=True)
def _solve_into(t, cost, a, b, max_iter, tol, basis_r, basis_c, warm, iwork, fwork,
                plan, value, f, g, code, iters):  # pragma: no cover (compiled)
    """Problem t in float64, its cost divided by its largest magnitude (the plan of an LP
    does not change when its cost is scaled; value and duals are scaled back) and b scaled
    to a's mass; iwork, fwork: :func:`_workspace`."""
    M, N = cost.shape[1], cost.shape[2]
    scale = 0.0
    for i in range(M):
        for j in range(N):
            scale = max(scale, abs(np.float64(cost[t, i, j])))
    if scale == 0.0:
        scale = 1.0
    c = fwork[:M * N].reshape((M, N))
    for i in range(M):
        for j in range(N):
            c[i, j] = np.float64(cost[t, i, j]) / scale
    at = fwork[M * N:M * N + M]
    bt = fwork[M * N + M:M * N + M + N]
    sa = 0.0
    sb = 0.0
    for i in range(M):
        at[i] = a[t, i]
        sa += at[i]
    for j in range(N):
        bt[j] = b[t, j]
        sb += bt[j]
    for j in range(N):
        bt[j] *= sa / sb                      # equal masses to machine precision
    code[t], iters[t], v = _solve_one(c, at, bt, plan[t], f[t], g[t], max_iter, tol,
                                      basis_r[t], basis_c[t], warm, iwork, fwork[M * N + M + N:])
    value[t] = v * scale
    for i in range(M):
        f[t, i] *= scale
    for j in range(N):
        g[t, j] *= scale


_BLOCK = 16      # problems per parallel task, which share one workspace


@njit(cache=True, parallel=True)
def _solve_parallel(cost, a, b, max_iter, tol, basis_r, basis_c, warm):  # pragma: no cover
    out = _outputs(cost)
    B, M, N = cost.shape
    for block in prange((B + _BLOCK - 1) // _BLOCK):
        iwork, fwork = _workspace(M, N)
        for t in range(block * _BLOCK, min(B, (block + 1) * _BLOCK)):
            _solve_into(t, cost, a, b, max_iter, tol, basis_r, basis_c, warm, iwork, fwork, *out)
    return out


@njit(cache=True)
def _solve_serial(cost, a, b, max_iter, tol, basis_r, basis_c, warm):  # pragma: no cover
    out = _outputs(cost)
    iwork, fwork = _workspace(cost.shape[1], cost.shape[2])
    for t in range(cost.shape[0]):
        _solve_into(t, cost, a, b, max_iter, tol, basis_r, basis_c, warm, iwork, fwork, *out)
    return out


PARALLEL_MIN_BATCH = 64      # below this, thread start-up costs more than it saves


def solve_batch(cost, a, b, max_iter, tol, basis=None):
    """Solve cost [B, M, N], a [B, M], b [B, N] (float32 or float64, any scale; b is scaled
    to a's mass); in parallel over the problems when B >= PARALLEL_MIN_BATCH.

    ``basis``: optional starting bases (rows [B, M + N - 1], columns [B, M + N - 1], int64),
    e.g. those returned for nearby problems: a problem starts from its basis where that is a
    spanning tree whose flows are feasible for its marginals (a warm start: the same optimum
    in fewer pivots), else from the matrix-minimum rule.

    Returns plan [B, M, N] (in cost's dtype), value [B], f [B, M], g [B, N] (float64; a dual
    optimum with f_0 = 0), code [B] (1 = optimal), the pivot count [B] and the final bases
    (rows, columns).
    """
    B, M, N = cost.shape
    warm = basis is not None
    if warm:
        rows, cols = (np.ascontiguousarray(x, dtype=np.int64).copy() for x in basis)
    else:
        rows = np.zeros((B, M + N - 1), np.int64)
        cols = np.zeros((B, M + N - 1), np.int64)
    out = (_solve_parallel if B >= PARALLEL_MIN_BATCH else _solve_serial)(
        cost, a, b, max_iter, tol, rows, cols, warm)
    return (*out, (rows, cols))
