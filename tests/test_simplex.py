"""The compiled batched simplex engine of ``exact`` against POT's network simplex and HiGHS."""
import numpy as np
import pytest
import torch

from fewshot.emd import EMDInputError, solve
from fewshot.emd import _exact, _simplex

from emd_reference import cosine_problems, lp_emd


def _degenerate_problems():
    """Ties everywhere: integer costs, uniform and zero weights (many optimal plans/duals)."""
    g = torch.Generator().manual_seed(5)
    cost = torch.randint(0, 3, (64, 7, 6), generator=g).double()
    a = torch.full((64, 7), 6.0, dtype=torch.float64)
    b = torch.full((64, 6), 7.0, dtype=torch.float64)
    a[::3, 0] = 0.0
    b[1::3, 2] = 0.0
    a = a * 42 / a.sum(1, keepdim=True)
    b = b * 42 / b.sum(1, keepdim=True)
    return cost, a, b


@pytest.mark.parametrize("shape", [(375, 25, 25), (40, 9, 30), (20, 1, 7), (20, 7, 1), (4, 100, 100)])
def test_simplex_engine_equals_pot(shape):
    cost, a, b = cosine_problems(*shape, seed=sum(shape))
    leaves = [t.clone().requires_grad_(True) for t in (cost, a, b)]
    results = {}
    for engine in ("simplex", "pot"):
        c, x, y = [t.detach().clone().requires_grad_(True) for t in leaves]
        r = solve(c, x, y, solver="exact", engine=engine)
        r.value.sum().backward()
        results[engine] = (r, c.grad, x.grad, y.grad)
    (r, *grads), (ref, *ref_grads) = results["simplex"], results["pot"]
    torch.testing.assert_close(r.value, ref.value, atol=1e-9, rtol=0)
    # generic random problems have one optimal plan and (up to the shift) one dual optimum
    torch.testing.assert_close(r.plan, ref.plan, atol=1e-9, rtol=0)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-8, rtol=0)


def test_simplex_engine_on_degenerate_problems_is_optimal():
    cost, a, b = _degenerate_problems()
    r = solve(cost, a, b, solver="exact", engine="simplex")
    f, g = r.potentials
    for i in range(0, 64, 7):
        assert r.value[i].item() == pytest.approx(lp_emd(cost[i].numpy(), a[i].numpy(),
                                                         b[i].numpy()), abs=1e-9)
    torch.testing.assert_close(r.plan.sum(2), a, atol=1e-12, rtol=0)
    torch.testing.assert_close(r.plan.sum(1), b, atol=1e-12, rtol=0)
    assert (r.plan >= 0).all()
    # any optimal dual: feasible and tight on the plan's support (complementary slackness)
    reduced = cost - f[:, :, None] - g[:, None, :]
    assert reduced.min() > -1e-12
    assert (reduced * r.plan).abs().max() < 1e-12


def test_unfinished_problems_are_resolved_by_pot():
    cost, a, b = cosine_problems(12, 9, 9, seed=1)
    args = [np.ascontiguousarray(t.numpy()) for t in (cost, a, b)]
    plan, value, f, g, code, iters, _ = _simplex.solve_batch(*args, 0, 1e-12)
    assert (code == 0).any() and (iters == 0).all()     # no pivots allowed: not optimal yet
    r = solve(cost, a, b, solver="exact", engine="simplex", simplex_max_iter=0)
    ref = solve(cost, a, b, solver="exact", engine="pot")
    assert (r.info["pivots"] == 0).all()
    torch.testing.assert_close(r.value, ref.value, rtol=0, atol=1e-12)
    torch.testing.assert_close(r.plan, ref.plan, rtol=0, atol=1e-12)


def test_unknown_engine_is_an_error():
    cost, a, b = cosine_problems(1, 3, 3)
    with pytest.raises(ValueError, match="engine"):
        solve(cost, a, b, solver="exact", engine="lemon")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("engine", ["simplex", "pot"])
def test_exact_is_scale_invariant(dtype, engine):
    """The LP optimum for costs scaled by 1e-14 ... 1e8, in float32 and float64: the value is
    the scale times scipy HiGHS's value of the unscaled problem (the plan of an LP does not
    depend on the scale of its cost)."""
    from emd_reference import lp_emd
    from fewshot import emd

    g = torch.Generator().manual_seed(3)
    cost = torch.rand(4, 6, 7, generator=g, dtype=torch.float64)
    a = torch.rand(4, 6, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(4, 7, generator=g, dtype=torch.float64) + 0.1
    b = b * a.sum(1, keepdim=True) / b.sum(1, keepdim=True)
    reference = torch.tensor([lp_emd(cost[i].numpy(), a[i].numpy(), b[i].numpy()) for i in range(4)],
                             dtype=torch.float64)
    rtol = 1e-9 if dtype == torch.float64 else 1e-5
    for exponent in range(-14, 9):
        scale = 10.0 ** exponent
        c = (cost * scale).to(dtype)
        r = emd.solve(c, a.to(dtype), b.to(dtype), solver="exact", engine=engine)
        got = r.value.double() / scale          # float32: inputs rounded to ~1e-7 relative
        torch.testing.assert_close(got, reference, rtol=rtol, atol=0, msg=f"scale 1e{exponent}")
        f, g_ = r.potentials
        dual = ((f.double() * a).sum(1) + (g_.double() * b).sum(1)) / scale
        torch.testing.assert_close(dual, reference, rtol=rtol, atol=0, msg=f"dual at 1e{exponent}")


def test_warm_started_simplex_gives_the_cold_optimum_in_fewer_pivots():
    """Starting from the optimal bases of slightly different problems (as consecutive
    Structured FC steps are) gives the same plans and values as a cold start, in fewer
    pivots; a basis that is not feasible for the new marginals falls back to the cold start."""
    from fewshot import emd
    cost, a, b = cosine_problems(64, 25, 25, seed=4)
    first = emd.solve(cost, a, b, solver="exact")
    g = torch.Generator().manual_seed(5)
    cost2 = cost + 0.01 * torch.randn(cost.shape, generator=g, dtype=torch.float64)
    a2 = a * (1 + 0.01 * torch.rand(a.shape, generator=g, dtype=torch.float64))
    a2 = a2 * a.sum(1, keepdim=True) / a2.sum(1, keepdim=True)
    cold = emd.solve(cost2, a2, b, solver="exact")
    warm = emd.solve(cost2, a2, b, solver="exact", init=first.info["warm_start"])
    torch.testing.assert_close(warm.value, cold.value, rtol=1e-12, atol=0)
    torch.testing.assert_close(warm.plan, cold.plan, rtol=0, atol=1e-10)
    assert int(warm.info["pivots"].sum()) < int(cold.info["pivots"].sum()) / 2
    # zeros are not a basis: every problem starts cold
    zeros = tuple(torch.zeros_like(t) for t in first.info["warm_start"])
    again = emd.solve(cost2, a2, b, solver="exact", init=zeros)
    assert torch.equal(again.info["pivots"], cold.info["pivots"])
    with pytest.raises(emd.EMDInputError, match="basis"):
        emd.solve(cost2, a2, b, solver="exact", init=(first.potentials[0], first.potentials[1]))


def test_auto_engine_takes_the_simplex_for_small_problems_and_pot_for_large_ones():
    """engine 'auto' (the default) on weighted problems: the batched simplex up to
    AUTO_POT_ABOVE cost entries (it reports pivots), POT's network simplex above; the same
    optimum as the other engine."""
    g = torch.Generator().manual_seed(0)
    for n, simplex in ((25, True), (400, False)):
        assert (n * n <= _exact.AUTO_POT_ABOVE) == simplex
        x, y = torch.rand(2, n, 3, generator=g, dtype=torch.float64), torch.rand(2, n, 3, generator=g, dtype=torch.float64)
        cost = torch.cdist(x, y)
        a = torch.rand(2, n, generator=g, dtype=torch.float64) + 0.5
        b = torch.rand(2, n, generator=g, dtype=torch.float64) + 0.5
        b = b * a.sum(1, keepdim=True) / b.sum(1, keepdim=True)
        r = solve(cost, a, b, solver="exact")
        assert ("pivots" in r.info) == simplex
        other = solve(cost, a, b, solver="exact", engine="pot" if simplex else "simplex")
        torch.testing.assert_close(r.value, other.value, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-9, 1.0, 1e7])
def test_assignment_engine_gives_scipys_optimum_and_optimal_duals(scale):
    """Two clouds of N points with uniform weights: engine 'assignment' gives scipy's assignment optimum, a permutation plan and
    potentials that are dual feasible and optimal (f_i + g_j <= cost_ij, <f, a> + <g, b> =
    value), in any units; the other engines agree."""
    from scipy.optimize import linear_sum_assignment
    g = torch.Generator().manual_seed(1)
    for n in (7, 64, 300):
        x, y = torch.rand(2, n, 3, generator=g, dtype=torch.float64), torch.rand(2, n, 3, generator=g, dtype=torch.float64)
        cost = torch.cdist(x, y) * scale
        a = torch.full((2, n), 3.0 / n, dtype=torch.float64)            # mass 3
        r = solve(cost, a, a, solver="exact", engine="assignment")
        for i in range(2):
            rows, cols = linear_sum_assignment(cost[i].numpy())
            assert abs(float(r.value[i]) - 3 * float(cost[i][rows, cols].mean())) <= 1e-12 * scale
        assert torch.equal((r.plan > 0).sum(2), torch.ones(2, n, dtype=torch.long))
        torch.testing.assert_close(r.plan.sum(1), a, rtol=0, atol=1e-15)
        f, gg = r.potentials
        assert float((cost - f[:, :, None] - gg[:, None, :]).min()) >= -1e-12 * scale
        torch.testing.assert_close((f * a).sum(1) + (gg * a).sum(1), r.value, rtol=1e-12, atol=0)
        pot = solve(cost, a, a, solver="exact", engine="pot")
        torch.testing.assert_close(r.value, pot.value, rtol=1e-12, atol=0)


def test_assignment_engine_refuses_weighted_or_rectangular_problems():
    cost = torch.rand(1, 4, 4, dtype=torch.float64)
    with pytest.raises(EMDInputError, match="engine 'assignment' needs M == N and equal weights"):
        solve(cost, torch.tensor([[1.0, 2, 1, 1]]).double(), torch.full((1, 4), 1.25).double(),
              solver="exact", engine="assignment")
    with pytest.raises(EMDInputError, match="M=4, N=3"):
        solve(cost[:, :, :3], torch.full((1, 4), 0.25).double(), torch.full((1, 3), 1 / 3).double(),
              solver="exact", engine="assignment")
