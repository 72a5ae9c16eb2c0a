"""The learned (transformer) EMD estimator: feasibility, gradients, and that it learns."""
import os

import pytest
import torch

from fewshot.emd import MatchingTransformer, learned_emd, solve
from fewshot.emd._learned import load_model, random_problems, save_model, train_matcher
from fewshot.errors import ConfigError


def test_plan_is_feasible_and_gradients_are_finite():
    g = torch.Generator().manual_seed(0)
    cost, a, b = random_problems(6, 9, g, dtype=torch.float64)
    torch.manual_seed(0)
    model = MatchingTransformer(dim=16, layers=1).double()
    cost.requires_grad_(True), a.requires_grad_(True), b.requires_grad_(True)
    r = solve(cost, a, b, solver="learned", model=model)
    torch.testing.assert_close(r.plan.sum(2), a, atol=1e-12, rtol=0)
    torch.testing.assert_close(r.plan.sum(1), b, atol=1e-12, rtol=0)
    assert (r.plan >= 0).all() and r.info["marginal_error"].max() < 1e-12
    grads = torch.autograd.grad(r.value.sum(), (cost, a, b))
    assert all(torch.isfinite(t).all() for t in grads)
    # different set sizes (M != N, larger than any training size) go through the same model
    cost2, a2, b2 = random_problems(2, 40, g, dtype=torch.float64)
    r2 = solve(cost2[:, :, :17], a2, b2[:, :17] * 40 / b2[:, :17].sum(1, keepdim=True), solver="learned",
               model=model)
    assert r2.plan.shape == (2, 40, 17)


def test_short_training_beats_random_matching_by_far(tmp_path):
    torch.manual_seed(0)
    model = MatchingTransformer(dim=32, layers=1)
    history = train_matcher(model, steps=120, batch=32, n=10, seed=0, lr=2e-3)
    assert history[-1] < history[0]
    g = torch.Generator().manual_seed(123)                # held-out problems
    cost, a, b = random_problems(200, 10, g)
    exact = solve(cost.double(), a.double(), b.double()).value
    with torch.no_grad():
        learned = solve(cost, a, b, solver="learned", model=model).value.double()
    perm = torch.stack([torch.randperm(10, generator=g) for _ in range(200)])     # random matchings
    random_plan = torch.zeros_like(cost).scatter_(2, perm[:, :, None], 1.0)
    random_plan = random_plan * a[:, :, None]                                      # feasible for rows only
    from fewshot.emd._learned import round_to_polytope
    random_value = (round_to_polytope(random_plan, a, b) * cost).sum((1, 2)).double()
    err_learned = ((learned - exact) / exact).abs().mean()
    err_random = ((random_value - exact) / exact).abs().mean()
    assert err_learned < 0.25 * err_random, (err_learned, err_random)
    assert torch.corrcoef(torch.stack([learned, exact]))[0, 1] > 0.95
    # the checkpoint round trip used by the solver option
    path = str(tmp_path / "learned.pt")
    save_model(model, path, {"steps": 120})
    loaded = load_model(path, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        again = solve(cost, a, b, solver="learned", checkpoint=path).value.double()
    torch.testing.assert_close(again, learned)
    assert loaded.config == model.config
    x, y = torch.randn(3, 10, 2), torch.randn(3, 14, 2)
    assert learned_emd(x, y, checkpoint=path).value.shape == (3,)


def test_learned_solver_errors():
    g = torch.Generator().manual_seed(0)
    cost, a, b = random_problems(2, 5, g)
    with pytest.raises(ConfigError, match="does not exist"):
        solve(cost, a, b, solver="learned", checkpoint="/nonexistent/learned.pt")


@pytest.mark.parametrize("width,weights", [(64, "random"), (64, "uniform"), (640, "random"), (640, "uniform")])
def test_shipped_default_model_matches_exact_on_cosine_problems(width, weights):
    """``solve(cost, a, b, solver="learned")`` with no options uses the model that ships in
    the package (a few hundred KB), and ranks 25-node DeepEMD-like cosine problems as the
    exact LP does, with random or uniform weights, at Conv-4's and ResNet-12's widths:
    Pearson correlation of the values >= 0.99."""
    from fewshot.emd._learned import DEFAULT_MODEL
    assert os.path.getsize(DEFAULT_MODEL) < 600_000
    g = torch.Generator().manual_seed(11)                  # not the training seed
    cost, a, b = random_problems(200, 25, g, kind="cosine", width=width, weights=weights)
    learned = solve(cost, a, b, solver="learned")
    exact = solve(cost.double(), a.double(), b.double(), solver="exact")
    assert float(learned.info["marginal_error"].max()) < 1e-4          # a feasible plan
    values = torch.stack([learned.value.detach().double(), exact.value])
    assert float(torch.corrcoef(values)[0, 1]) >= 0.99
    # the LP optimum is a lower bound of every feasible plan's cost
    assert bool((learned.value.detach().double() >= exact.value - 1e-4 * exact.value.abs()).all())


def test_shipped_pointcloud_model_matches_exact_on_generated_shapes():
    """``learned_emd(x, y)`` with no options uses the shipped ``pointclouds`` model (trained on
    real ModelNet40 clouds) and tracks the exact EMD on shapes it never saw: generated
    surfaces (spheres, boxes, cylinders, tori, cones, stretched and rotated), 128 points; its
    defaults (a sharper plan, ``POINTCLOUD_OPTIONS``) within 5% of the optimum, closer than the
    model's own temperature."""
    from fewshot.data.pointclouds import synthetic_shapes
    from fewshot.emd import LEARNED_MODELS
    from fewshot.emd._learned import model_path
    assert os.path.getsize(model_path("pointclouds")) < 600_000
    assert set(LEARNED_MODELS) == {"cosine", "pointclouds"}
    g = torch.Generator().manual_seed(5)
    clouds = synthetic_shapes(120, 128, g).points
    x, y = clouds[:60], clouds[60:]
    with torch.no_grad():
        learned = learned_emd(x, y)
        by_name = learned_emd(x, y, checkpoint="pointclouds")
        soft = learned_emd(x, y, sharpness=1.0, n_sinkhorn=30)   # the model's own temperature
    uniform = torch.full((60, 128), 1 / 128, dtype=torch.float64)
    exact = solve(torch.cdist(x, y).double(), uniform, uniform, solver="exact").value
    torch.testing.assert_close(learned.value, by_name.value)
    values = torch.stack([learned.value.double(), exact])
    assert float(torch.corrcoef(values)[0, 1]) >= 0.99
    error = float(((values[0] - exact) / exact).abs().mean())
    assert error <= 0.05, error
    assert error < 0.75 * float(((soft.value.double() - exact) / exact).abs().mean())   # sharper: closer
    assert bool((values[0] >= exact * (1 - 1e-4)).all())          # the LP optimum is a lower bound


def test_learned_models_by_name_and_unknown_names():
    g = torch.Generator().manual_seed(0)
    cost, a, b = random_problems(4, 25, g, kind="cosine")
    with torch.no_grad():
        default = solve(cost, a, b, solver="learned").value
        named = solve(cost, a, b, solver="learned", checkpoint="cosine").value
    torch.testing.assert_close(default, named)            # solve() defaults to the cosine model
    with pytest.raises(ConfigError, match="expected a shipped model, cosine or pointclouds"):
        solve(cost, a, b, solver="learned", checkpoint="point_clouds")


def test_robustness_benchmark_rows(tmp_path):
    """benchmarks/learned_emd_robustness.py: one row per setting and model, agreement in range."""
    import json
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "learned_emd_robustness.py")
    out = tmp_path / "rob.json"
    run = subprocess.run([sys.executable, script, "--problems", "12", "--nodes", "6", "--widths", "8",
                          "--model", "cosine", "--model", "pointclouds", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(r["setting"], r["model"]) for r in rows} == {
        (s, m) for s in ("cosine 8-d, random weights", "cosine 8-d, uniform weights", "cross-reference, 8-d features")
        for m in ("cosine", "pointclouds")}
    assert all(-1 <= r["pearson"] <= 1 and r["mean_relative_error"] >= 0 for r in rows)


def test_plan_gradient_is_the_plan_and_closer_to_the_exact_gradient_on_shapes():
    """``gradient="plan"``: the same value as ``autograd``, d value / d cost = the returned plan
    (a and b get no gradient), and on generated surfaces at 128 points the gradient with
    respect to the points is closer to the exact EMD's (the envelope theorem's, from the
    optimal plan) than the gradient through the network: ``learned_emd``'s default."""
    from fewshot.data.pointclouds import synthetic_shapes
    g = torch.Generator().manual_seed(7)
    clouds = synthetic_shapes(40, 128, g).points
    x, y = clouds[:20], clouds[20:]
    grads = {}
    for mode in ("autograd", "plan"):
        xr = x.clone().requires_grad_(True)
        r = learned_emd(xr, y, gradient=mode)
        r.value.sum().backward()
        grads[mode], values = xr.grad.double(), r.value.detach()
        if mode == "autograd":
            first = values
    torch.testing.assert_close(values, first)
    cost = torch.cdist(x, y).requires_grad_(True)
    u = torch.full((20, 128), 1 / 128).requires_grad_(True)
    r = solve(cost, u, u, solver="learned", checkpoint="pointclouds", gradient="plan")
    d_cost, d_a = torch.autograd.grad(r.value.sum(), (cost, u), allow_unused=True)
    torch.testing.assert_close(d_cost, r.plan)
    assert d_a is None
    xr = x.double().clone().requires_grad_(True)
    uniform = torch.full((20, 128), 1 / 128, dtype=torch.float64)
    solve(torch.cdist(xr, y.double()), uniform, uniform, solver="exact").value.sum().backward()
    cosine = {m: torch.nn.functional.cosine_similarity(gr.flatten(1), xr.grad.flatten(1), dim=1).median()
              for m, gr in grads.items()}
    assert cosine["plan"] > cosine["autograd"] and cosine["plan"] >= 0.85, cosine
    with pytest.raises(ConfigError, match="gradient"):
        learned_emd(x, y, gradient="implicit")
