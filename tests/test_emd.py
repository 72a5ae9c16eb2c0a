import numpy as np
import pytest
import torch

from fewshot import emd
from fewshot.emd import EMDInputError, solve
from fewshot.errors import ConfigError

from emd_reference import check_directional_derivative, cosine_problems, lp_emd, solver_inputs


def test_registry():
    assert {"exact", "qpth"} <= set(emd.solvers())


@pytest.mark.parametrize("shape", [(6, 9, 9), (4, 7, 5), (3, 25, 25)])
def test_exact_matches_highs(shape):
    B, M, N = shape
    cost, a, b = cosine_problems(B, M, N, seed=M * N)
    r = solve(cost, a, b, solver="exact")
    for i in range(B):
        assert r.value[i].item() == pytest.approx(lp_emd(cost[i].numpy(), a[i].numpy(), b[i].numpy()),
                                                  abs=1e-6)
    torch.testing.assert_close(r.plan.sum(2), a, atol=1e-9, rtol=0)
    torch.testing.assert_close(r.plan.sum(1), b, atol=1e-9, rtol=0)
    assert (r.plan >= 0).all()
    torch.testing.assert_close((r.plan * cost).sum((1, 2)), r.value)
    assert all(x is y for x, y in zip(r.problem, (cost, a, b)))      # the result carries its problem
    f, g = r.potentials
    # strong duality: value = <f, a> + <g, b> for the centred potentials too (sum a = sum b)
    torch.testing.assert_close((f * a).sum(1) + (g * b).sum(1), r.value, atol=1e-9, rtol=0)


def test_exact_gradients_match_finite_differences():
    """Generic (random, non-degenerate) problems: directional derivatives of the LP value
    along (d cost, d a, d b) with sum(d a) = sum(d b) equal the envelope-theorem gradients."""
    B, M, N = 4, 6, 5
    cost, a, b = cosine_problems(B, M, N, seed=3)
    cost.requires_grad_(True), a.requires_grad_(True), b.requires_grad_(True)
    value = solve(cost, a, b).value
    gc, ga, gb = torch.autograd.grad(value.sum(), (cost, a, b))
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        dc = torch.randn(B, M, N, generator=g, dtype=torch.float64)
        da = torch.randn(B, M, generator=g, dtype=torch.float64)
        db = torch.randn(B, N, generator=g, dtype=torch.float64)
        da -= da.mean(1, keepdim=True)
        db -= db.mean(1, keepdim=True)
        h = 1e-6
        with torch.no_grad():
            lp = lambda s: np.array([lp_emd((cost + s * dc)[i].numpy(), (a + s * da)[i].numpy(),  # noqa
                                             (b + s * db)[i].numpy()) for i in range(B)])
            fd = (lp(h) - lp(-h)) / (2 * h)
        analytic = ((gc * dc).sum((1, 2)) + (ga * da).sum(1) + (gb * db).sum(1)).numpy()
        np.testing.assert_allclose(analytic, fd, rtol=1e-5, atol=1e-6)
    # the a/b gradients are the centred potentials
    assert ga.mean(1).abs().max() < 1e-12 and gb.mean(1).abs().max() < 1e-12


@pytest.mark.parametrize("form", ["L2", "QP"])
def test_qpth_agrees_with_exact(form):
    cost, a, b = cosine_problems(3, 9, 9, seed=5)
    exact = solve(cost, a, b, solver="exact")
    r = solve(cost, a, b, solver="qpth", form=form)
    # regularisation error of l2 1e-6 / ridge 1e-4 at mass 9: far below 1e-3
    torch.testing.assert_close(r.value, exact.value, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(r.plan.sum(2), a, atol=1e-6, rtol=0)
    torch.testing.assert_close(r.plan.sum(1), b, atol=1e-6, rtol=0)


def test_qpth_real_deepemd_scale_is_reliable():
    """25 x 25 cosine costs of 640-d features, weights summing to 25, L2 form, l2 1e-6:
    finishes, finite, and within the regularisation error of the exact optimum."""
    cost, a, b = cosine_problems(2, 25, 25, seed=9, dim=640)
    r = solve(cost, a, b, solver="qpth", form="L2", l2_strength=1e-6)
    exact = solve(cost, a, b, solver="exact")
    assert torch.isfinite(r.plan).all()
    torch.testing.assert_close(r.value, exact.value, atol=1e-3, rtol=1e-4)


def test_qpth_gradient_flows_to_cost_and_weights():
    cost, a, b = cosine_problems(2, 4, 4, seed=1)
    cost.requires_grad_(True), a.requires_grad_(True)
    r = solve(cost, a, b, solver="qpth")
    ga, gc = torch.autograd.grad(r.value.sum(), (a, cost))
    assert torch.isfinite(gc).all() and gc.abs().sum() > 0 and ga.abs().sum() > 0
    # d value / d cost ~ plan (envelope theorem holds up to the tiny regulariser)
    torch.testing.assert_close(gc, r.plan.detach(), atol=2e-3, rtol=0)


@pytest.mark.parametrize("solver", emd.solvers())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_preserved(solver, dtype):
    cost, a, b = cosine_problems(2, 4, 5, dtype=dtype, seed=2)
    r = solve(cost, a, b, solver=solver, **solver_inputs(solver, cost))
    assert r.plan.dtype == dtype and r.value.dtype == dtype
    assert r.plan.device == cost.device and r.value.shape == (2,) and r.plan.shape == (2, 4, 5)
    assert r.solver == solver


@pytest.mark.parametrize("solver", emd.solvers())
def test_bad_input_names_the_argument(solver):
    cost, a, b = cosine_problems(2, 4, 4, seed=0)
    nan_cost = cost.clone()
    nan_cost[0, 1, 2] = float("nan")
    neg_a = a.clone()
    neg_a[1, 0] = -0.5
    cases = [
        ((nan_cost, a, b), "cost.*NaN"),
        ((cost.clone().fill_(float("inf")), a, b), "cost.*infinite"),
        ((cost, neg_a, b), "a has negative"),
        ((cost, a, torch.zeros_like(b)), "b has a row with zero"),
        ((cost, a[:, :3], b), r"a must have shape \[B, M\]"),
        ((cost, a, b[:1]), r"b must have shape"),
        ((cost[0], a, b), r"cost must have shape \[B, M, N\]"),
        ((cost, a.float(), b), "a has dtype torch.float32 but cost has torch.float64"),
        ((cost, a, b.to("meta")), "b is on meta but cost is on cpu"),
        ((cost, a * 2, b), "equal total mass"),
        ((cost.long(), a, b), "cost must be a floating-point"),
    ]
    for args, match in cases:
        with pytest.raises(EMDInputError, match=match):
            solve(*args, solver=solver)


def test_unknown_solver_and_option():
    cost, a, b = cosine_problems(1, 3, 3)
    with pytest.raises(ConfigError, match="unknown EMD solver 'simplex'"):
        solve(cost, a, b, solver="simplex")
    with pytest.raises(ConfigError, match="'epsilon'"):
        solve(cost, a, b, solver="exact", epsilon=0.1)


# ----------------------------------------------------------------------------- sinkhorn

def _renormalised(cost, a, b):
    """float64 copies with b rescaled to a's mass to float64 precision."""
    a64, b64 = a.double(), b.double()
    return cost.double(), a64, b64 * a64.sum(1, keepdim=True) / b64.sum(1, keepdim=True)


def test_sinkhorn_float32_converges_to_exact_without_nan():
    cost, a, b = cosine_problems(375, 25, 25, dtype=torch.float32, seed=4, dim=64)
    exact = solve(*_renormalised(cost, a, b), solver="exact")
    r = solve(cost, a, b, solver="sinkhorn", epsilon=0.01)
    assert torch.isfinite(r.plan).all() and torch.isfinite(r.value).all()
    rel = ((r.value.double() - exact.value) / exact.value).abs()
    assert rel.max() <= 0.01
    assert r.info["converged"].all() and (r.info["marginal_error"] <= 1e-3).all()
    err = (r.plan.sum(1) - b).abs().sum(1) / b.sum(1)
    assert err.max() <= 1.5e-3  # the stated tolerance, up to float32 rounding
    # smaller epsilon: closer to the LP; still no NaN in float32 at epsilon = 1e-3
    small = solve(cost[:20], a[:20], b[:20], solver="sinkhorn", epsilon=1e-3, max_iter=3000,
                  epsilon_scaling=0.5)
    assert torch.isfinite(small.plan).all()
    rel_small = ((small.value.double() - exact.value[:20]) / exact.value[:20]).abs()
    assert rel_small.mean() < rel[:20].mean()


def test_sinkhorn_warm_start_reaches_the_same_fixed_point_in_few_iterations():
    assert emd.spec("sinkhorn").warm_starts and emd.spec("exact").warm_starts
    assert not emd.spec("qpth").warm_starts
    cost, a, b = cosine_problems(20, 25, 25, dtype=torch.float64, seed=7, dim=32)
    cold = solve(cost, a, b, solver="sinkhorn", epsilon=0.01, tol=1e-6)
    assert cold.info["iterations"] > 100
    # a nearby problem (the cost moved a little) started from the first one's potentials
    moved = cost + 1e-4 * torch.rand(cost.shape, generator=torch.Generator().manual_seed(1),
                                     dtype=cost.dtype)
    ref = solve(moved, a, b, solver="sinkhorn", epsilon=0.01, tol=1e-6)
    warm = solve(moved, a, b, solver="sinkhorn", epsilon=0.01, tol=1e-6, init=cold.potentials)
    assert warm.info["iterations"] < ref.info["iterations"] / 3
    torch.testing.assert_close(warm.plan, ref.plan, atol=5e-5, rtol=0)
    torch.testing.assert_close(warm.value, ref.value, atol=0, rtol=1e-6)   # both within tol of it
    with pytest.raises(ValueError, match=r"init must have shapes f \[20, 25\], g \[20, 25\]"):
        solve(cost, a, b, solver="sinkhorn", init=(cold.potentials[0][:3], cold.potentials[1]))


@pytest.mark.parametrize("gradient", ["implicit", "unrolled"])
def test_sinkhorn_gradient_matches_finite_differences(gradient):
    cost, a, b = cosine_problems(2, 5, 4, seed=1)

    def value(c, x, y):
        return solve(c, x, y, solver="sinkhorn", epsilon=0.1, tol=1e-13, max_iter=20000,
                     gradient=gradient).value

    check_directional_derivative(value, cost, a, b, h=1e-5, atol=1e-6, rtol=1e-5)


def _two_block_problem(seed):
    """Across two blocks the cost is 10, so exp((f + g - cost) / epsilon) underflows to 0 at
    epsilon = 0.01; within them costs lie in [0, 1] and each block carries its own mass."""
    g = torch.Generator().manual_seed(seed)
    cost = torch.full((1, 6, 6), 10.0, dtype=torch.float64)
    cost[0, :3, :3] = torch.rand(3, 3, generator=g, dtype=torch.float64)
    cost[0, 3:, 3:] = torch.rand(3, 3, generator=g, dtype=torch.float64)
    a = torch.rand(1, 6, generator=g, dtype=torch.float64) + 0.5
    b = torch.rand(1, 6, generator=g, dtype=torch.float64) + 0.5
    b[0, :3] *= a[0, :3].sum() / b[0, :3].sum()
    b[0, 3:] *= a[0, 3:].sum() / b[0, 3:].sum()
    return cost, a, b


@pytest.mark.parametrize("tol", [1e-3, 1e-12])
def test_sinkhorn_implicit_gradient_stays_bounded_when_the_plan_splits_into_blocks(tol):
    """The KKT matrix is then singular beyond its gauge: the gradient must not pick up
    arbitrary offsets between the blocks (it stays within the in-block cost range), and
    it matches finite differences along directions that keep each block's mass."""
    def value(c, x, y):
        return solve(c, x, y, solver="sinkhorn", epsilon=0.01, tol=tol, max_iter=100000).value

    for seed in range(20):
        cost, a, b = _two_block_problem(seed)
        c, x, y = (t.clone().requires_grad_(True) for t in (cost, a, b))
        assert solve(c, x, y, solver="sinkhorn", epsilon=0.01).plan[0, :3, 3:].max() == 0
        for grad in torch.autograd.grad(value(c, x, y).sum(), (c, x, y)):
            assert torch.isfinite(grad).all() and grad.abs().max() < 2
    if tol > 1e-6:
        return
    cost, a, b = _two_block_problem(0)
    c, x, y = (t.clone().requires_grad_(True) for t in (cost, a, b))
    gc, ga, gb = torch.autograd.grad(value(c, x, y).sum(), (c, x, y))
    dc = torch.zeros_like(cost)
    dc[0, :3, :3], dc[0, 3:, 3:] = torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(0),
                                               dtype=torch.float64)
    da = torch.tensor([[1.0, -0.5, -0.5, 0.3, -0.3, 0.0]], dtype=torch.float64)
    db = torch.tensor([[0.2, 0.2, -0.4, -1.0, 0.5, 0.5]], dtype=torch.float64)
    h = 1e-6
    with torch.no_grad():
        fd = (value(cost + h * dc, a + h * da, b + h * db)
              - value(cost - h * dc, a - h * da, b - h * db)) / (2 * h)
    analytic = (gc * dc).sum() + (ga * da).sum() + (gb * db).sum()
    assert float(analytic) == pytest.approx(float(fd), abs=1e-5)


# ----------------------------------------------------------------------------- cvxpylayers

def test_cvxpylayers_agrees_with_exact_and_its_own_finite_differences():
    cost, a, b = cosine_problems(2, 6, 5, seed=5)
    exact = solve(cost, a, b, solver="exact")
    cost.requires_grad_(True)
    r = solve(cost, a, b, solver="cvxpylayers")
    torch.testing.assert_close(r.value.detach(), exact.value, atol=2e-3, rtol=0)
    torch.testing.assert_close(r.plan.detach().sum(2), a, atol=1e-6, rtol=0)
    gc, = torch.autograd.grad(r.value.sum(), cost)
    dc = torch.randn(cost.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = 1e-4
    with torch.no_grad():
        fd = (solve(cost + h * dc, a, b, solver="cvxpylayers").value
              - solve(cost - h * dc, a, b, solver="cvxpylayers").value) / (2 * h)
    torch.testing.assert_close((gc * dc).sum((1, 2)), fd, atol=1e-4, rtol=1e-3)


# ----------------------------------------------------------------------------- solver matrix

# Relative L1 marginal error each solver guarantees (sinkhorn: its stated tol, in float32 too).
MARGINAL_TOL = {"exact": 1e-6, "qpth": 1e-4, "sinkhorn": 2e-3, "cvxpylayers": 1e-4, "tree": 1e-6,
                "chain": 1e-6, "learned": 1e-4}
# Problems some solvers cannot take in reasonable time or memory.
SKIP = {("qpth", 100): "qpth's dense KKT system for 10^4 variables needs ~800 MB per problem"}
HEAVY = {("sinkhorn", 100, 375), ("qpth", 25, 375), ("cvxpylayers", 25, 375), ("cvxpylayers", 100, 1),
         ("cvxpylayers", 100, 375)}


def _matrix():
    for solver in emd.solvers():
        for n in (9, 25, 100):
            for batch in (1, 375):
                for dtype in (torch.float32, torch.float64):
                    marks = [pytest.mark.slow] if (solver, n, batch) in HEAVY else []
                    if (solver, n) in SKIP:
                        marks = [pytest.mark.skip(reason=SKIP[(solver, n)])]
                    yield pytest.param(solver, n, batch, dtype, marks=marks,
                                       id=f"{solver}-{n}-{batch}-{str(dtype)[6:]}")


@pytest.mark.parametrize("solver,n,batch,dtype", list(_matrix()))
def test_solver_matrix(solver, n, batch, dtype):
    cost, a, b = cosine_problems(batch, n, n, dtype=dtype, seed=n + batch)
    cost.requires_grad_(True), a.requires_grad_(True), b.requires_grad_(True)
    r = solve(cost, a, b, solver=solver, **solver_inputs(solver, cost))
    assert r.plan.shape == (batch, n, n) and r.value.shape == (batch,)
    assert r.plan.dtype == dtype and r.value.dtype == dtype and r.solver == solver
    mass = a.detach().sum(1)
    for got, want in ((r.plan.detach().sum(2), a.detach()), (r.plan.detach().sum(1), b.detach())):
        err = (got - want).abs().sum(1) / mass
        assert err.max() <= MARGINAL_TOL[solver], float(err.max())
    assert torch.isfinite(r.value).all() and (r.plan.detach() >= -1e-6).all()
    grads = torch.autograd.grad(r.value.sum(), (cost, a, b), allow_unused=True)
    assert grads[0] is not None and grads[0].shape == cost.shape and torch.isfinite(grads[0]).all()
    for g, t in zip(grads[1:], (a, b)):
        assert g is not None and g.shape == t.shape and torch.isfinite(g).all()


# ----------------------------------------------------------------------------- tree

def _tree_metric(cost, parent, M, N):
    """Path lengths between left and right nodes in the tree given by ``parent``."""
    import collections
    adj = collections.defaultdict(list)
    for v, u in enumerate(parent):
        if u != v:
            i, j = (v, u - M) if v < M else (u, v - M)
            adj[v].append((u, cost[i, j]))
            adj[u].append((v, cost[i, j]))
    out = np.zeros((M, N))
    for i in range(M):
        dist, stack = {i: 0.0}, [i]
        while stack:
            x = stack.pop()
            for y, w in adj[x]:
                if y not in dist:
                    dist[y] = dist[x] + w
                    stack.append(y)
        out[i] = [dist[M + j] for j in range(N)]
    return out


def test_tree_rho1_equals_lp_on_the_tree_metric():
    from fewshot.emd._tree import bipartite_mst
    B, M, N = 4, 7, 6
    cost, a, b = cosine_problems(B, M, N, seed=8)
    r = solve(cost, a, b, solver="tree")
    parent, _ = bipartite_mst(cost, torch.zeros(B, dtype=torch.long))
    for p in range(B):
        D = _tree_metric(cost[p].numpy(), parent[p].tolist(), M, N)
        assert r.value[p].item() == pytest.approx(lp_emd(D, a[p].numpy(), b[p].numpy()), abs=1e-6)
        # the returned plan is optimal for the tree metric and feasible
        assert (r.plan[p] * torch.from_numpy(D)).sum().item() == pytest.approx(r.value[p].item(), abs=1e-9)
    torch.testing.assert_close(r.plan.sum(2), a, atol=1e-9, rtol=0)
    torch.testing.assert_close(r.plan.sum(1), b, atol=1e-9, rtol=0)


@pytest.mark.parametrize("rho", [1.0, 2.0])
def test_tree_gradient_matches_finite_differences(rho):
    cost, a, b = cosine_problems(3, 5, 4, seed=6)
    f = lambda c, x, y: solve(c, x, y, solver="tree", rho=rho, return_plan=False).value  # noqa: E731
    _, ga, gb = check_directional_derivative(f, cost, a, b, h=1e-7, atol=1e-6, rtol=1e-6, seed=1)
    # dirt-conserving gradient: the entries of the mass gradients sum to zero
    assert ga.sum(1).abs().max() < 1e-12 and gb.sum(1).abs().max() < 1e-12


def test_tree_sliced_average_of_random_trees():
    cost, a, b = cosine_problems(2, 6, 6, seed=3)
    one = solve(cost, a, b, solver="tree")
    many = solve(cost, a, b, solver="tree", n_trees=4, seed=1)
    torch.testing.assert_close(many.plan.sum(2), a, atol=1e-9, rtol=0)
    assert not torch.equal(one.value, many.value)


# ----------------------------------------------------------------------------- chain

def _line_problems(B, M, N, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, M, generator=g, dtype=torch.float64) * 4
    y = torch.rand(B, N, generator=g, dtype=torch.float64) * 4
    a = torch.rand(B, M, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(B, N, generator=g, dtype=torch.float64) + 0.1
    a, b = a * 3 / a.sum(1, keepdim=True), b * 3 / b.sum(1, keepdim=True)
    return x, y, (x[:, :, None] - y[:, None, :]).abs(), a, b


@pytest.mark.parametrize("shape", [(5, 9, 9), (4, 7, 12), (3, 1, 6)])
def test_chain_equals_scipy_wasserstein_and_lp(shape):
    from scipy.stats import wasserstein_distance
    x, y, cost, a, b = _line_problems(*shape, seed=sum(shape))
    r = solve(cost, a, b, solver="chain", x=x, y=y)
    closed = emd.chain_emd(x, y, a, b, rho=1.0)
    for i in range(shape[0]):
        ref = 3 * wasserstein_distance(x[i].numpy(), y[i].numpy(), a[i].numpy(), b[i].numpy())
        assert r.value[i].item() == pytest.approx(ref, abs=1e-12)
        assert closed[i].item() == pytest.approx(ref, abs=1e-12)
        assert r.value[i].item() == pytest.approx(lp_emd(cost[i].numpy(), a[i].numpy(), b[i].numpy()),
                                                  abs=1e-9)
    torch.testing.assert_close(r.plan.sum(2), a, atol=1e-12, rtol=0)
    torch.testing.assert_close(r.plan.sum(1), b, atol=1e-12, rtol=0)


def test_chain_gradients_and_dirt_conserving_relaxation():
    x, y, cost, a, b = _line_problems(3, 6, 5, seed=2)
    f = lambda c, p, q: solve(c, p, q, solver="chain", x=x, y=y).value  # noqa: E731
    check_directional_derivative(f, cost, a, b, h=1e-7, atol=1e-6, rtol=1e-6)
    for rho in (1.0, 2.0):
        g = lambda c, p, q: emd.chain_emd(x, y, p, q, rho=rho) + 0 * c.sum((1, 2))  # noqa: E731
        _, ga, gb = check_directional_derivative(g, cost, a, b, h=1e-7, atol=1e-6, rtol=1e-6, seed=3)
        assert ga.sum(1).abs().max() < 1e-12 and gb.sum(1).abs().max() < 1e-12
    # coordinates are differentiable in the closed form: d W1 / d x_i = a_i * sign(F_a - F_b) there
    xs = x.clone().requires_grad_(True)
    gx, = torch.autograd.grad(emd.chain_emd(xs, y, a, b).sum(), xs)
    h = 1e-7
    for i in range(6):
        d = torch.zeros_like(x)
        d[:, i] = h
        fd = (emd.chain_emd(x + d, y, a, b) - emd.chain_emd(x - d, y, a, b)) / (2 * h)
        torch.testing.assert_close(gx[:, i], fd, atol=1e-6, rtol=1e-6)


def test_chain_sliced_over_projections_of_features():
    cost, a, b = cosine_problems(4, 9, 9, seed=4)
    pts = solver_inputs("chain", cost)
    one = solve(cost, a, b, solver="chain", n_projections=1, **pts)
    many = solve(cost, a, b, solver="chain", n_projections=32, **pts)
    exact = solve(cost, a, b, solver="exact")
    for r in (one, many):            # feasible plans, so upper bounds of the exact EMD
        torch.testing.assert_close(r.plan.sum(2), a, atol=1e-12, rtol=0)
        assert (r.value >= exact.value - 1e-12).all()
    assert many.info["n_projections"] == 32
    with pytest.raises(EMDInputError, match="chain solver needs node coordinates"):
        solve(cost, a, b, solver="chain")
    with pytest.raises(EMDInputError, match=r"x must be \[B, M\]"):
        solve(cost, a, b, solver="chain", x=pts["x"][:, :3], y=pts["y"])


# ----------------------------------------------------------------------------- class-tree loss

def test_tree_emd_on_class_histograms_matches_lp_and_chain():
    from scipy.stats import wasserstein_distance
    from fewshot.emd.hierarchy import TreeEMDLoss, tree_emd
    # a chain 0-1-2-3-4 with unit edges: rho = 1 is the 1-D Wasserstein distance
    parents = [-1, 0, 1, 2, 3]
    g = torch.Generator().manual_seed(0)
    p = torch.rand(3, 5, generator=g, dtype=torch.float64)
    q = torch.rand(3, 5, generator=g, dtype=torch.float64)
    p, q = p / p.sum(1, keepdim=True), q / q.sum(1, keepdim=True)
    got = tree_emd(p, q, parents, rho=1.0)
    for i in range(3):
        ref = wasserstein_distance(range(5), range(5), p[i].numpy(), q[i].numpy())
        assert got[i].item() == pytest.approx(ref, abs=1e-12)
    # a small hierarchy: root 4 with children 5 (classes 0, 1) and 6 (classes 2, 3)
    parents = [5, 5, 6, 6, -1, 4, 4]
    lengths = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 2.0], dtype=torch.float64)
    D = np.array([[0, 2, 6, 6], [2, 0, 6, 6], [6, 6, 0, 2], [6, 6, 2, 0]], dtype=float)
    pk = torch.zeros(3, 7, dtype=torch.float64)
    qk = torch.zeros(3, 7, dtype=torch.float64)
    pk[:, :4], qk[:, :4] = p[:, :4] / p[:, :4].sum(1, keepdim=True), q[:, :4] / q[:, :4].sum(1, keepdim=True)
    got = tree_emd(pk, qk, parents, lengths, rho=1.0)
    for i in range(3):
        assert got[i].item() == pytest.approx(lp_emd(D, pk[i, :4].numpy(), qk[i, :4].numpy()), abs=1e-9)
    # EMD^2 as a loss: its gradient conserves dirt (entries sum to zero) and it trains
    logits = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    loss_fn = TreeEMDLoss(parents, lengths.tolist(), rho=2.0)
    pk_leaf = logits.softmax(-1)
    pk_full = torch.cat([pk_leaf, torch.zeros(8, 3, dtype=torch.float64)], 1).detach().requires_grad_(True)
    q_full = torch.zeros(8, 7, dtype=torch.float64).scatter_(1, labels[:, None], 1.0)
    grad_p, = torch.autograd.grad(tree_emd(pk_full, q_full, parents, lengths, 2.0).sum(), pk_full)
    assert grad_p.sum(1).abs().max() < 1e-12
    opt = torch.optim.SGD([logits], lr=1.0)
    first = loss_fn(logits, labels).item()
    for _ in range(50):
        opt.zero_grad()
        loss_fn(logits, labels).backward()
        opt.step()
    assert loss_fn(logits, labels).item() < 0.5 * first


def test_class_tree_errors():
    from fewshot.emd.hierarchy import ancestor_matrix
    with pytest.raises(ConfigError, match="exactly one root"):
        ancestor_matrix([-1, -1, 0])
    with pytest.raises(ConfigError, match="cycle"):
        ancestor_matrix([-1, 2, 1])
    with pytest.raises(ConfigError, match="out of range"):
        ancestor_matrix([-1, 7])


def test_load_class_tree_puts_classes_first(tmp_path):
    import json
    from fewshot.emd.hierarchy import load_class_tree, tree_emd
    spec = {"nodes": ["root", "a", "b", "c1", "c2", "c3"], "parents": [-1, 0, 0, 1, 1, 2],
            "lengths": [0, 1, 3, 1, 2, 1]}
    path = tmp_path / "tree.json"
    path.write_text(json.dumps(spec))
    classes = ["c3", "c1", "c2"]
    loss = load_class_tree(str(path), classes, rho=1.0)
    logits = torch.randn(4, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1])
    # reference on the file's own node order
    probs = logits.softmax(-1)
    where = [spec["nodes"].index(c) for c in classes]
    p = torch.zeros(4, 6, dtype=torch.float64)
    p[:, where] = probs
    q = torch.zeros(4, 6, dtype=torch.float64)
    q[torch.arange(4), torch.tensor(where)[labels]] = 1.0
    ref = tree_emd(p, q, spec["parents"], torch.tensor(spec["lengths"], dtype=torch.float64), rho=1.0)
    assert loss(logits, labels).item() == pytest.approx(ref.mean().item(), abs=1e-12)


# ----------------------------------------------------------------------------- gradcheck

GRADCHECK = {"exact": 1e-6, "sinkhorn": 1e-5, "tree": 1e-6, "chain": 1e-6, "learned": 1e-5, "qpth": 1e-4}


@pytest.mark.parametrize("solver", sorted(GRADCHECK))
def test_gradcheck_in_cost(solver):
    """torch.autograd.gradcheck of value(cost) in float64 (a and b fixed: perturbing one weight
    alone would leave the transport polytope)."""
    cost, a, b = cosine_problems(2, 4, 5, seed=11)
    extra = solver_inputs(solver, cost)
    if solver == "sinkhorn":          # differentiate the converged fixed point, not a truncated one
        extra.update(epsilon=0.1, tol=1e-12, max_iter=100_000)
    fn = lambda c: solve(c, a, b, solver=solver, **extra).value  # noqa: E731
    assert torch.autograd.gradcheck(fn, (cost.clone().requires_grad_(True),), eps=1e-6,
                                    atol=GRADCHECK[solver], rtol=1e-3)


def test_every_solver_has_a_gradcheck_or_a_reason():
    # cvxpylayers: SCS solves to ~1e-6, below what central differences at eps 1e-6 resolve;
    # its gradient is checked along directions against its own value instead (above).
    assert set(emd.solvers()) == set(GRADCHECK) | {"cvxpylayers"}


def test_a_registered_plugin_declares_its_capabilities_once():
    """register_solver: the plug-in's SolverSpec carries how it differentiates, warm starts,
    the envelope property (which DeepEMD's closed-form SFC path reads) and a cross-option check;
    a built Solver reports them from its spec."""
    name = "plugin_exact_for_test"
    if name not in emd.solvers():
        def check(options, where):
            if options["scale"] <= 0:
                raise ConfigError(f"{where}.scale: expected > 0")

        @emd.register_solver(name, options={"scale": emd.Option(1.0, float)}, differentiation="envelope",
                             warm_starts=True, envelope=True, check=check)
        def plugin(cost, a, b, scale=1.0, init=None):
            r = solve(cost * scale, a, b, solver="exact", init=init)
            return emd.EMDResult(plan=r.plan, value=r.value / scale, potentials=r.potentials, solver=name,
                                 info=r.info)
    solver = emd.make_solver(name, {"scale": 2.0})
    assert solver.envelope and solver.warm_starts and solver.differentiation == "envelope"
    assert emd.spec(name) is solver.spec and not solver.needs_points
    with pytest.raises(ConfigError, match="scale"):
        emd.make_solver(name, {"scale": -1.0})
    cost, a, b = cosine_problems(4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(solver(cost, a, b).value, solve(cost, a, b, solver="exact").value)
    from fewshot.models import create_model
    model = create_model("deepemd", "conv4", {"hidden": 8}, {"solver": name, "eval_solver": name})
    assert model.head.solver.envelope


@pytest.mark.slow
def test_exact_pivot_budget_grows_with_the_problem():
    """Two 3,000-point clouds: POT needs more than 100,000 pivots, the old fixed budget
    (an error that says to raise max_iter); the default budget, max(100,000, M * N), reaches
    the optimum, certified by its duals (feasible, no duality gap)."""
    g = torch.Generator().manual_seed(0)
    n = 3000
    x, y = torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randn(n, 3, generator=g, dtype=torch.float64)
    cost = torch.cdist(x, y + 0.5)[None]
    a = b = torch.full((1, n), 1.0 / n, dtype=torch.float64)
    with pytest.raises(emd.EMDSolverError, match="raise max_iter"):
        solve(cost, a, b, solver="exact", engine="pot", max_iter=100_000)
    r = solve(cost, a, b, solver="exact", engine="pot")
    f, g_ = r.potentials
    assert (f[0][:, None] + g_[0][None, :] - cost[0]).max() < 1e-9            # dual feasible
    assert float(r.value) == pytest.approx(float(f @ a[0] + g_ @ b[0]), rel=1e-9)   # no gap
    assert torch.allclose(r.plan.sum(2), a) and torch.allclose(r.plan.sum(1), b)
