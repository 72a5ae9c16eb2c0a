import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fewshot import emd
from fewshot.models import Conv4, ResNet12, create_model
from fewshot.models.classifier import class_means
from fewshot.models.deepemd import cross_reference_weights, emd_logits

from emd_reference import lp_emd


def test_weights_and_logits_by_hand():
    """A 2-query x 2-prototype example computed with plain loops and scipy's LP."""
    g = torch.Generator().manual_seed(0)
    query = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)   # [Q, C, M]
    proto = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)   # [W, C, N]
    T = 12.5
    logits = emd_logits(query, proto, solver="exact", temperature=T)
    a_all = cross_reference_weights(query, proto)
    for q in range(2):
        for w in range(2):
            u, v = query[q].numpy(), proto[w].numpy()           # [C, M], [C, N]
            a = np.array([max(0.0, u[:, i] @ v.mean(1)) + 1e-3 for i in range(4)])
            b = np.array([max(0.0, v[:, j] @ u.mean(1)) + 1e-3 for j in range(4)])
            a, b = a * 4 / a.sum(), b * 4 / b.sum()
            np.testing.assert_allclose(a_all[q, w].numpy(), a)
            uc, vc = u - u.mean(0), v - v.mean(0)                # channel centring
            sim = np.array([[uc[:, i] @ vc[:, j] / np.linalg.norm(uc[:, i]) / np.linalg.norm(vc[:, j])
                             for j in range(4)] for i in range(4)])
            # logit = T / n_nodes * sum(plan * sim) with the LP-optimal plan for cost 1 - sim
            value = lp_emd(1 - sim, a, b)
            expected = T / 4 * (a.sum() - value)
            assert logits[q, w].item() == pytest.approx(expected, abs=1e-8)


def test_resnet12_shapes_and_channel_count():
    net = ResNet12().eval()
    with torch.no_grad():
        fmap = net.forward_features(torch.randn(2, 3, 84, 84))
    assert fmap.shape == (2, 640, 5, 5) and net.num_channels == 640
    small = ResNet12(channels=(8, 16, 24, 32)).eval()
    assert small.forward_features(torch.randn(1, 3, 84, 84)).shape == (1, 32, 5, 5)
    assert Conv4().forward_features(torch.randn(1, 3, 84, 84)).shape == (1, 64, 5, 5)


def test_node_layouts():
    x = torch.randn(3, 3, 84, 84)
    fcn = create_model("deepemd", "conv4", {"hidden": 8}, {"pyramid": [2, 1]})
    assert fcn.encode(x).shape == (3, 8, 25 + 4 + 1)
    grid = create_model("deepemd", "conv4", {"hidden": 8}, {"patch": "grid", "patch_size": 32}).eval()
    assert grid.encode(x).shape == (3, 8, 13)
    assert torch.equal(grid.encode(x), grid.encode(x))  # deterministic at test time: cacheable
    samp = create_model("deepemd", "conv4", {"hidden": 8}, {"patch": "sampling", "num_patch": 5,
                                                            "patch_size": 32})
    assert samp.encode(x).shape == (3, 8, 5) and not samp.supports_feature_cache()


def _episode(n_way=3, n_shot=1, n_query=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n_way * n_shot, 3, size, size, generator=g)
    q = torch.randn(n_way * n_query, 3, size, size, generator=g)
    return s, torch.arange(n_way).repeat_interleave(n_shot), q, torch.arange(n_way).repeat_interleave(n_query)


@pytest.mark.parametrize("backbone,options", [("conv4", {"hidden": 16}),
                                              ("resnet12", {"channels": [8, 8, 16, 16]})])
def test_episode_backward_reaches_every_parameter(backbone, options):
    torch.manual_seed(0)
    model = create_model("deepemd", backbone, options, {})
    s, ys, q, yq = _episode(size=84 if backbone == "resnet12" else 32)
    loss = F.cross_entropy(model.episode_logits(s, ys, q), yq)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gradient_reaches_the_weights_path():
    """The cross-reference weights contribute to the gradient (unlike the OpenCV path): the
    problem of emd_problem solved with its weights detached gives another gradient."""
    from fewshot.models.deepemd import emd_problem
    torch.manual_seed(0)
    query = torch.randn(4, 6, 9, dtype=torch.float64, requires_grad=True)
    proto = torch.randn(3, 6, 9, dtype=torch.float64)
    grad_full, = torch.autograd.grad(emd_logits(query, proto).sum(), query)
    flat = lambda t: t.reshape(-1, *t.shape[2:])  # noqa: E731
    for detach, expect_same in ((False, True), (True, False)):
        cost, a, b = emd_problem(query, proto)
        if detach:
            a, b = a.detach(), b.detach()
        value = emd.solve(flat(cost), flat(a), flat(b)).value.reshape(4, 3)
        grad, = torch.autograd.grad((12.5 * (1 - value / 9)).sum(), query)
        assert torch.allclose(grad, grad_full, atol=1e-10) == expect_same
    assert (grad - grad_full).abs().max() > 1e-3


def test_qpth_and_exact_logits_agree():
    torch.manual_seed(1)
    query = torch.randn(2, 8, 4, dtype=torch.float64)
    proto = torch.randn(3, 8, 4, dtype=torch.float64)
    torch.testing.assert_close(emd_logits(query, proto, solver="qpth"),
                               emd_logits(query, proto, solver="exact"), atol=1e-3, rtol=0)


def test_sfc_lowers_support_loss():
    torch.manual_seed(0)
    model = create_model("deepemd", "conv4", {"hidden": 16}, {"sfc_steps": 10, "sfc_lr": 0.1}).eval()
    s, ys, _, _ = _episode(n_way=3, n_shot=4)
    feats = model.encode(s).detach()
    before = model.sfc_loss(feats, ys, class_means(feats, ys))
    model.fit_support(feats, ys)
    assert model.prototypes.shape == (3, 16, 4)
    assert model.sfc_loss(feats, ys, model.prototypes) < before - 0.05


def test_sfc_warm_started_sinkhorn_matches_cold_start_with_far_fewer_iterations():
    """SFC through Sinkhorn keeps each support image's potentials between steps: the
    prototypes equal those of cold-started solves, for a fraction of the iterations; the
    shuffling is seeded by ``sfc_seed``, so the global RNG does not change the result."""
    import dataclasses
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(10, 64, 25, generator=g, dtype=torch.float64)
    labels = torch.arange(5).repeat_interleave(2)
    model = create_model("deepemd", "conv4", {"hidden": 16},
                         {"solver": "sinkhorn", "solver_options": {"tol": 1e-4},
                          "sfc_steps": 3}).eval()
    torch.manual_seed(0)
    warm_stats, cold_stats = {}, {}
    warm = model.structured_fc(feats, labels, warm_stats)
    torch.manual_seed(1)   # the global RNG plays no part
    model.sfc = dataclasses.replace(model.sfc, warm_start=False)   # model option sfc_warm_start
    cold = model.structured_fc(feats, labels, cold_stats)
    assert warm_stats["solves"] == cold_stats["solves"] == 3 * 3
    warm_iterations, iterations = warm_stats["iterations"], [cold_stats["iterations"]]
    assert warm_iterations < sum(iterations) / 3
    torch.testing.assert_close(warm, cold, atol=1e-5, rtol=0)
    assert (warm - class_means(feats, labels)).abs().max() > 1e-3   # SFC did move them


def test_train_and_eval_solvers_are_reported():
    model = create_model("deepemd", "conv4", {}, {"solver": "qpth", "eval_solver": "exact"})
    assert model.describe() == {"patch": "fcn", "solver": "qpth", "eval_solver": "exact"}
    from fewshot.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown EMD solver 'opencv'"):
        create_model("deepemd", "conv4", {}, {"solver": "opencv"})


def test_closed_form_sfc_gradient_equals_autograd():
    from fewshot.models.deepemd import sfc_gradient
    g = torch.Generator().manual_seed(0)
    for center in (True, False):
        model = create_model("deepemd", "conv4", {}, {"center": center}).eval().double()
        x = torch.randn(3, 4, 16, 9, generator=g, dtype=torch.float64)
        proto = torch.randn(3, 5, 16, 9, generator=g, dtype=torch.float64).requires_grad_(True)
        y = torch.randint(0, 5, (3, 4), generator=g)
        loss = F.cross_entropy(model.head(x, proto).reshape(-1, 5), y.reshape(-1), reduction="sum") / 4
        expected, = torch.autograd.grad(loss, proto)
        got, _ = sfc_gradient(model.head, x, proto.detach(), y)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("compiled", [True, False])
def test_lockstep_sfc_gives_the_prototypes_of_the_autograd_fit_of_each_episode(compiled):
    """The new Structured FC (closed-form gradient, warm-started exact solves, episodes in
    lockstep) gives each episode the prototypes of the plain fit: autograd, cold solves, one
    episode at a time (float64, to 1e-6); with the compiled CPU kernels and with the batched
    torch operations used on other devices."""
    import dataclasses
    g = torch.Generator().manual_seed(7)
    feats = torch.randn(3, 10, 32, 9, generator=g, dtype=torch.float64)
    labels = torch.arange(5).repeat_interleave(2).expand(3, -1)
    model = create_model("deepemd", "conv4", {}, {"sfc_steps": 15}).eval().double()
    plain = dataclasses.replace(model.sfc, gradient="autograd", warm_start=False)
    stats = {}
    new = dataclasses.replace(model.sfc, compiled=compiled).fit_many(model.head, feats, labels, stats)
    for e in range(3):
        old = plain.fit(model.head, feats[e], labels[e])
        torch.testing.assert_close(new[e], old, rtol=0, atol=1e-6)
        assert (old - class_means(feats[e], labels[e])).abs().max() > 1e-2     # SFC did move them
    assert stats["solves"] == 15 * 3 and stats["pivots"] > 0


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("center,momentum,dampening,weight_decay",
                         [(False, 0.5, 0.0, 0.01), (True, 0.0, 0.0, 0.05)])
def test_fused_sgd_step_equals_torch_sgd(center, momentum, dampening, weight_decay, compiled):
    """The closed form applies torch.optim.SGD's update itself (momentum, dampening, weight
    decay; the compiled kernel without forming the gradient): the prototypes equal the
    autograd fit with torch.optim.SGD for other options and without channel centring (float64)."""
    import dataclasses
    g = torch.Generator().manual_seed(11)
    feats = torch.randn(2, 6, 24, 9, generator=g, dtype=torch.float64)
    labels = torch.arange(3).repeat_interleave(2).expand(2, -1)
    model = create_model("deepemd", "conv4", {}, {
        "sfc_steps": 6, "center": center, "sfc_momentum": momentum, "sfc_dampening": dampening,
        "sfc_weight_decay": weight_decay}).eval().double()
    plain = dataclasses.replace(model.sfc, gradient="autograd", warm_start=False)
    new = dataclasses.replace(model.sfc, compiled=compiled).fit_many(model.head, feats, labels)
    for e in range(2):
        old = plain.fit(model.head, feats[e], labels[e])
        torch.testing.assert_close(new[e], old, rtol=0, atol=1e-9)
        assert (old - class_means(feats[e], labels[e])).abs().max() > 1e-2
