"""Relaxed EMD on trees and chains (Martinez et al. 2016): the closed form against the LP and
finite differences on the 1,000-class WordNet tree, the class-tree checks, the Sinkhorn
kernel engine against the log domain and POT, and the experiment scripts on generated data."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import ot
import pytest
import torch

from fewshot import emd
from fewshot.emd import EMDInputError
from fewshot.emd.hierarchy import ClassTree, TreeEMDLoss, tree_emd
from fewshot.errors import ConfigError

from conftest import make_csv_layout

ROOT = os.path.join(os.path.dirname(__file__), "..")
IMAGENET_TREE = os.path.join(ROOT, "configs", "trees", "imagenet_wordnet.json")


@pytest.fixture(scope="module")
def imagenet_tree():
    return ClassTree.from_json(IMAGENET_TREE)


def walk_distance(parents, lengths, u, v):
    """Tree distance by walking both nodes up to their lowest common ancestor (reference)."""
    up = {}
    d, w = 0.0, u
    while w >= 0:
        up[w] = d
        d, w = d + lengths[w], parents[w]
    d, w = 0.0, v
    while w not in up:
        d, w = d + lengths[w], parents[w]
    return d + up[w]


def histograms(B, C, K, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    p, q = torch.rand(B, C, generator=g, dtype=dtype), torch.rand(B, C, generator=g, dtype=dtype)
    pad = torch.zeros(B, K - C, dtype=dtype)
    return (torch.cat([p / p.sum(1, keepdim=True), pad], 1), torch.cat([q / q.sum(1, keepdim=True), pad], 1))


def test_imagenet_tree_ships_with_every_class_a_leaf(imagenet_tree):
    spec = json.load(open(IMAGENET_TREE))
    assert len(spec["nodes"]) == 1372 and spec["parents"].count(-1) == 1
    classes = spec["nodes"][:1000]
    assert len(set(classes)) == 1000 and all(c.startswith("n") for c in classes)
    assert not set(range(1000)) & set(spec["parents"])              # no class is a parent
    assert spec["labels"][0] == "tench"


def test_tree_distances_are_path_lengths(imagenet_tree):
    D = imagenet_tree.distances()
    g = np.random.default_rng(0)
    lengths = imagenet_tree.lengths.tolist()
    for u, v in g.integers(0, 1372, size=(40, 2)):
        assert D[u, v].item() == walk_distance(imagenet_tree.parents, lengths, int(u), int(v))
    assert torch.equal(D, D.t()) and bool((D.diagonal() == 0).all())


def test_closed_form_emd_equals_the_lp_on_the_imagenet_tree(imagenet_tree):
    """rho = 1 on the 1,000 classes equals the LP under the tree metric (POT's network simplex)."""
    p, q = histograms(3, 1000, 1372, seed=1)
    M = imagenet_tree.distances()[:1000, :1000].numpy()
    lp = [ot.emd2(p[i, :1000].numpy(), q[i, :1000].numpy(), M) for i in range(3)]
    for compiled in (True, False):
        got = tree_emd(p, q, imagenet_tree, rho=1.0, compiled=compiled)
        for i in range(3):
            assert got[i].item() == pytest.approx(lp[i], rel=1e-9)
    # one-hot targets: EMD(p, e_y) is the expected tree distance sum_c p_c d(c, y)
    y = torch.tensor([3, 500, 999])
    onehot = torch.zeros_like(q).scatter_(1, y[:, None], 1.0)
    expected = (p[:, :1000] * torch.from_numpy(M)[:, y].t()).sum(1)
    torch.testing.assert_close(tree_emd(p, onehot, imagenet_tree, rho=1.0), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("rho", [1.0, 2.0, 1.5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_closed_form_gradient_matches_finite_differences(imagenet_tree, rho, dtype, compiled):
    """The dirt-conserving gradient, by the compiled kernel and by the sparse products: sums to
    zero and gives the directional derivative along every mass-preserving direction (central
    differences in float64)."""
    p, q = histograms(4, 1000, 1372, seed=2)
    pg = p.to(dtype).requires_grad_(True)
    value = tree_emd(pg, q.to(dtype), imagenet_tree, rho=rho, compiled=compiled)
    grad, = torch.autograd.grad((value * torch.arange(1, 5, dtype=dtype)).sum(), pg)
    assert grad.dtype == dtype
    tol = 1e-10 if dtype == torch.float64 else 1e-4      # float32: K * eps of the centring
    assert grad.double().sum(1).abs().max() < tol * grad.abs().max()
    g = torch.Generator().manual_seed(3)
    h = 1e-6
    weights = torch.arange(1, 5, dtype=torch.float64)
    for _ in range(3):
        d = torch.randn(4, 1372, generator=g, dtype=torch.float64) * (p > 0)   # stay on the classes
        d = (d - d.sum(1, keepdim=True) / 1000 * (p > 0))
        d = d * 1e-2 * p.min()
        f = lambda t: (tree_emd(p + t * d, q, imagenet_tree, rho=rho) * weights).sum()  # noqa: E731
        fd = (f(h) - f(-h)) / (2 * h)
        assert (grad.double() * d).sum().item() == pytest.approx(fd.item(), rel=1e-6 if dtype == torch.float64 else 1e-3)


def test_emd2_is_the_sum_of_squared_subtree_differences():
    """rho = 2 against the formula written out on a small tree: root 4 -> {5: classes 0, 1; 6: 2, 3}."""
    parents, lengths = [5, 5, 6, 6, -1, 4, 4], [1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 3.0]
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0, 0, 0]], dtype=torch.float64)
    q = torch.tensor([[0.4, 0.0, 0.1, 0.5, 0, 0, 0]], dtype=torch.float64)
    d = (p - q)[0].tolist()
    ref = sum(x * x for x in d[:4]) + 2.0 * (d[0] + d[1]) ** 2 + 3.0 * (d[2] + d[3]) ** 2
    assert tree_emd(p, q, parents, lengths, rho=2.0).item() == pytest.approx(ref, abs=1e-15)
    assert tree_emd(p, q, ClassTree(parents, lengths), rho=2.0).item() == pytest.approx(ref, abs=1e-15)


@pytest.mark.parametrize("call, match", [
    (lambda: ClassTree([-1, 0, 0], [0, 1, -2]), "edge length of node 2 must be a finite number >= 0"),
    (lambda: ClassTree([-1, 0], [0, float("nan")]), "finite number >= 0"),
    (lambda: ClassTree([-1, -1, 0]), "exactly one root"),
    (lambda: ClassTree([-1, 2, 1]), "cycle"),
    (lambda: ClassTree([-1, 7]), "out of range"),
    (lambda: ClassTree([-1, 0], [1.0]), "differ in length"),
    (lambda: ClassTree([]), "no nodes"),
    (lambda: TreeEMDLoss([-1, 0, 0], rho=0.5), "rho must be a number >= 1"),
])
def test_class_tree_errors(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


@pytest.mark.parametrize("p, q, match", [
    ([[0.5, 0.5, float("nan")]], [[0.5, 0.5, 0.0]], "p contains NaN"),
    ([[0.5, 0.5, 0.0]], [[1.5, -0.5, 0.0]], "q has negative entries"),
    ([[0.5, 0.5, 0.0]], [[0.5, 0.2, 0.0]], "equal mass per row; row 0"),
    ([[0.5, 0.5, 0.0, 0.0]], [[0.5, 0.5, 0.0, 0.0]], r"shape \[B, C\] with 1 <= C <= 3"),
    ([[0.5, 0.5]], [[0.5, 0.5, 0.0]], r"shape \[B, C\]"),
    (np.zeros((0, 3)), np.zeros((0, 3)), r"holds no histogram"),
])
def test_tree_emd_rejects_bad_histograms(p, q, match):
    with pytest.raises(EMDInputError, match=match):
        tree_emd(torch.tensor(p, dtype=torch.float64), torch.tensor(q, dtype=torch.float64), [-1, 0, 0])


def test_compiled_needs_a_cpu_float_tensor():
    p = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.bfloat16)
    with pytest.raises(EMDInputError, match="compiled=True needs float32/float64"):
        tree_emd(p, p, [-1, 0, 0], compiled=True)
    assert tree_emd(p, p, [-1, 0, 0]).item() == 0            # bfloat16: the sparse products


def test_chain_emd_names_wrong_shapes():
    x = torch.arange(4.0)[None]
    a = torch.full((1, 4), 0.25)
    with pytest.raises(EMDInputError, match=r"chain_emd: x must be a tensor \[B, M\]"):
        emd.chain_emd(x[:, :, None], x, a, a)
    with pytest.raises(EMDInputError, match="expected x, a"):
        emd.chain_emd(x, x, a[:, :3], a)
    # the chain is the tree [-1, 0, 1, 2] with unit edges: the same closed form
    b = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    for rho in (1.0, 2.0):
        assert emd.chain_emd(x, x, a, b, rho=rho).item() == pytest.approx(
            tree_emd(b, a, [-1, 0, 1, 2], rho=rho).item(), rel=1e-6)


def test_tree_emd_loss_reads_the_json_tree_with_the_classes_first(tmp_path):
    spec = {"nodes": ["root", "a", "b", "c1", "c2", "c3"], "parents": [-1, 0, 0, 1, 1, 2],
            "lengths": [0, 1, 3, 1, 2, 1]}
    path = tmp_path / "tree.json"
    path.write_text(json.dumps(spec))
    tree = ClassTree.from_json(str(path), ["c3", "c1", "c2"])
    assert tree.nodes[:3] == ["c3", "c1", "c2"] and len(tree) == 6
    D = tree.distances()
    assert D[0, 1].item() == 1 + 3 + 1 + 1 and D[1, 2].item() == 3
    # the loss on the renumbered tree: a class's own label costs nothing, the sibling's 2 * 1
    logits = torch.tensor([[20.0, -20.0, -20.0], [-20.0, 20.0, -20.0]], dtype=torch.float64)
    loss = TreeEMDLoss(tree, rho=1.0)
    assert loss(logits, torch.tensor([0, 1])).item() == pytest.approx(0.0, abs=1e-12)
    assert loss(logits[1:], torch.tensor([2])).item() == pytest.approx(D[1, 2].item(), rel=1e-12)
    with pytest.raises(ConfigError, match=r"classes \['zz'\] are not nodes"):
        ClassTree.from_json(str(path), ["zz"])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="expected a JSON class tree"):
        ClassTree.from_json(str(tmp_path / "bad.json"))


# ----------------------------------------------------------------------------- Sinkhorn engines

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sinkhorn_kernel_engine_equals_log_domain_and_pot(dtype):
    g = torch.Generator().manual_seed(4)
    cost = torch.rand(5, 20, 30, generator=g, dtype=dtype)
    a, b = torch.rand(5, 20, generator=g, dtype=dtype) + 0.1, torch.rand(5, 30, generator=g, dtype=dtype) + 0.1
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    tol = 1e-10 if dtype == torch.float64 else 1e-4      # float32: K * eps of the centring
    kernel = emd.solve(cost, a, b, solver="sinkhorn", epsilon=0.05, tol=tol, max_iter=10_000)
    log = emd.solve(cost, a, b, solver="sinkhorn", epsilon=0.05, tol=tol, max_iter=10_000, engine="log")
    assert kernel.info["engine"] == "kernel" and log.info["engine"] == "log"
    close = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(kernel.value, log.value, rtol=close, atol=0)
    torch.testing.assert_close(kernel.plan, log.plan, rtol=0, atol=close)
    for i in range(5):      # masses equal in float64 too (float32's rounding would keep POT from converging)
        ai, bi = a[i].double() / a[i].double().sum(), b[i].double() / b[i].double().sum()
        ref = ot.bregman.sinkhorn_log(ai.numpy(), bi.numpy(), cost[i].double().numpy(),
                                      0.05, stopThr=1e-13, numItermax=100_000)
        np.testing.assert_allclose(kernel.plan[i].double().numpy(), ref, atol=1e-9 if dtype == torch.float64 else 1e-4)
    # a span beyond the dtype's range falls back to the log domain by itself
    tiny = emd.solve(cost, a, b, solver="sinkhorn", epsilon=1e-3 if dtype == torch.float32 else 1e-4,
                     tol=1e-2, max_iter=20_000)
    assert tiny.info["engine"] == "log"


def test_sinkhorn_shared_cost_unrolled_without_plan_matches_dense():
    """A cost expanded over the batch (one kernel), the value without the plan and its unrolled
    gradient, against the log domain on the materialised cost; zero-mass target bins."""
    g = torch.Generator().manual_seed(5)
    cost = torch.rand(12, 12, generator=g, dtype=torch.float64)
    a = (torch.rand(6, 12, generator=g, dtype=torch.float64) + 0.1)
    a = a / a.sum(1, keepdim=True)
    b = torch.zeros(6, 12, dtype=torch.float64).scatter_(1, torch.arange(6)[:, None], 1.0)
    b[:, 7] = 0.5
    b = b / b.sum(1, keepdim=True)
    grads = []
    for shared, engine in ((True, "auto"), (False, "log")):
        ag = a.clone().requires_grad_(True)
        c = cost[None].expand(6, -1, -1) if shared else cost[None].repeat(6, 1, 1)
        r = emd.solve(c, ag, b, solver="sinkhorn", epsilon=0.05, max_iter=50, tol=1e-12, gradient="unrolled",
                      on_unconverged="ignore", engine=engine, return_plan=shared is False)
        assert (r.plan is None) == shared
        grads.append((r.value.detach(), torch.autograd.grad(r.value.sum(), ag)[0]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-12, atol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-9, atol=1e-12)


def test_sinkhorn_bad_init_is_a_project_error():
    cost = torch.rand(2, 3, 3, dtype=torch.float64)
    a = torch.full((2, 3), 1 / 3, dtype=torch.float64)
    with pytest.raises(EMDInputError, match="init must have shapes"):
        emd.solve(cost, a, a, solver="sinkhorn", init=(torch.zeros(2, 4), torch.zeros(2, 3)))


# ----------------------------------------------------------------------------- experiment scripts

def test_small_data_script_runs_every_loss_on_generated_images(tmp_path):
    LOSSES = ("ce", "emd2", "ce+emd2", "sd+ce", "soft", "hxe", "ce+emd", "ce+emd2-scaled")
    root = make_csv_layout(str(tmp_path / "mini"), splits=(("train", 3), ("val", 2)), per_class=6)
    classes = [f"ntrain{c:04d}" for c in range(3)] + [f"nval{c:04d}" for c in range(2)]
    tree = tmp_path / "tree.json"
    tree.write_text(json.dumps({"nodes": ["root", "left", "right"] + classes,
                                "parents": [-1, 0, 0, 1, 1, 1, 2, 2], "lengths": [0, 2, 2, 1, 1, 1, 1, 1]}))
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "hierarchy_small_data.py"), "--data-root", root,
           "--tree", str(tree), "--per-class", "2", "3", "--epochs", "1", "--test-per-class", "2",
           "--seeds", "0", "--image-size", "16", "--batch", "4", "--out", str(out), "--losses", *LOSSES]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    runs = json.load(open(out / "runs.json"))
    assert sorted((r["per_class"], r["loss"]) for r in runs) == sorted((n, loss) for n in (2, 3) for loss in LOSSES)
    for r in runs:
        final = r["final"]
        assert 0 <= final["top1_error"] <= 100 and final["holistic"] >= 0 and 0 <= final["crm_top1_error"] <= 100
        # on this tree a mistake's LCA is 'left' or 'right' (height 1) or the root (height 3)
        assert 0 <= final["hdist_at_1"] <= 3 and 0 <= final["hdist_at_5"] <= 3 and 0 <= final["mistake_severity"] <= 3
    table = (out / "table.md").read_text()
    assert (out / "curves.png").stat().st_size > 0 and "| 3 | sd+ce | 1 |" in table
    assert "| 3 | ce + CRM at test time | 1 |" in table
    report = subprocess.run([sys.executable, cmd[1], "--report", "--out", str(out)], capture_output=True, text=True)
    assert report.returncode == 0 and report.stdout.count("\n| 2 |") == 2 * len(LOSSES), report.stderr
    bad = subprocess.run(cmd[:-2] + ["--test-per-class", "50", "--out", str(tmp_path / "o2")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "fewer than" in bad.stderr and "Traceback" not in bad.stderr


def test_chain_regression_script_runs_every_loss(tmp_path):
    run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "chain_regression.py"), "--length", "16",
                          "--train", "64", "--test", "16", "--hidden", "8", "--steps", "4", "--eval-every", "2",
                          "--sd-iterations", "5", "--seeds", "0", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.load(open(tmp_path / "chain.json"))
    assert [r["loss"] for r in result["runs"]] == ["mse", "sd", "emd", "emd2"]
    assert all(len(r["curve"]) == 3 for r in result["runs"]) and (tmp_path / "chain.png").is_file()


@pytest.mark.parametrize("epsilon", [0.05, 1.0])
def test_sinkhorn_against_a_one_hot_target_is_the_tree_emd(epsilon):
    """With a one-hot target the only feasible plan sends all of p to the label, so the
    Sinkhorn distance under the tree metric is sum_c p_c d(c, y), the closed-form EMD (rho = 1),
    for any epsilon: the entropic term has nothing to blur."""
    parents, lengths = [5, 5, 6, 6, -1, 4, 4], [1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 3.0]
    tree = ClassTree(parents, lengths)
    g = torch.Generator().manual_seed(6)
    p = torch.rand(5, 4, generator=g, dtype=torch.float64).softmax(-1)
    y = torch.tensor([0, 1, 2, 3, 2])
    q = torch.zeros_like(p).scatter_(1, y[:, None], 1.0)
    M = tree.distances()[:4, :4]
    sd = emd.solve(M[None].expand(5, -1, -1), p, q, solver="sinkhorn", epsilon=epsilon, tol=1e-12).value
    pad = torch.zeros(5, 3, dtype=torch.float64)
    closed = tree_emd(torch.cat([p, pad], 1), torch.cat([q, pad], 1), tree, rho=1.0)
    torch.testing.assert_close(sd, closed, rtol=1e-9, atol=0)


def test_sinkhorn_shared_cost_drops_converged_problems_without_copying_the_cost():
    """Problems that converge stop iterating while the rest go on (no autograd), also for a
    cost expanded over the batch; the answers equal those of the materialised cost."""
    g = torch.Generator().manual_seed(8)
    cost = torch.rand(10, 10, generator=g, dtype=torch.float64)
    a = torch.rand(6, 10, generator=g, dtype=torch.float64) + 0.05
    a[:3] = 1.0                                               # uniform rows: converge at once
    a = a / a.sum(1, keepdim=True)
    b = torch.full((6, 10), 0.1, dtype=torch.float64)
    shared = emd.solve(cost[None].expand(6, -1, -1), a, b, solver="sinkhorn", epsilon=0.02, tol=1e-9)
    dense = emd.solve(cost[None].repeat(6, 1, 1), a, b, solver="sinkhorn", epsilon=0.02, tol=1e-9)
    assert shared.info["engine"] == "kernel" and bool(shared.info["converged"].all())
    torch.testing.assert_close(shared.value, dense.value, rtol=1e-12, atol=0)
    torch.testing.assert_close(shared.plan, dense.plan, rtol=0, atol=1e-12)


# ------------------------------------------------- eq. 15, hierarchy metrics and baselines

@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("rho", [1.0, 2.0, 1.5])
def test_tree_emd_gradient_on_class_leaves_is_eq_15(imagenet_tree, rho, compiled):
    """Mass on the 1,000 classes (the leaves) of the 1,372-node tree: the gradient is eq. 15 of
    Martinez et al. 2016, the path sums of w_v = length_v rho |S_v|^(rho-1) sign(S_v) at each
    bin, projected over the N = 1,000 bins; latent nodes have no entry."""
    C, K = 1000, len(imagenet_tree)
    p, q = (t[:, :C].clone() for t in histograms(6, C, K, seed=11))
    pg = p.clone().requires_grad_(True)
    grad, = torch.autograd.grad(tree_emd(pg, q, imagenet_tree, rho=rho, compiled=compiled).sum(), pg)
    # the formula, dense and in numpy
    A = imagenet_tree.ancestor_matrix().numpy()                  # A[u, v] = 1: v is u or above u
    lengths = imagenet_tree.lengths.numpy()
    diff = np.concatenate([(p - q).numpy(), np.zeros((6, K - C))], 1)
    S = diff @ A                                                 # subtree sums
    w = lengths * rho * np.abs(S) ** (rho - 1) * np.sign(S)
    path = (w @ A.T)[:, :C]                                      # sum over the ancestors-or-self
    expected = path - path.mean(1, keepdims=True)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=0, atol=1e-9)
    # the value does not depend on where the zeros are written
    p_full, q_full = (torch.cat([t, torch.zeros(6, K - C, dtype=t.dtype)], 1) for t in (p, q))
    torch.testing.assert_close(tree_emd(p, q, imagenet_tree, rho=rho), tree_emd(p_full, q_full, imagenet_tree, rho=rho),
                               rtol=1e-12, atol=0)
    # with mass allowed on every node the projection is over all K nodes
    pf = p_full.clone().requires_grad_(True)
    full, = torch.autograd.grad(tree_emd(pf, q_full, imagenet_tree, rho=rho, compiled=compiled).sum(), pf)
    all_nodes = w @ A.T
    np.testing.assert_allclose(full.numpy(), all_nodes - all_nodes.mean(1, keepdims=True), rtol=0, atol=1e-9)


def small_class_tree():
    """c0, c1 under A (edges 1), c2 under B (edge 1), A and B under the root (edges 1 and 2):
    heights A 1, B 1, root 3; LCA heights c0-c1 1, c0-c2 3, c1-c2 3."""
    return ClassTree([3, 3, 4, 5, 5, -1], [1, 1, 1, 1, 2, 0], ["c0", "c1", "c2", "A", "B", "root"])


def test_heights_and_lca_heights_by_hand():
    from fewshot.emd.hierarchy import heights, lca_heights
    tree = small_class_tree()
    assert heights(tree).tolist() == [0, 0, 0, 1, 1, 3]
    assert lca_heights(tree, 3).tolist() == [[0, 1, 3], [1, 0, 3], [3, 3, 0]]


def test_hierarchy_metrics_and_crm_by_hand():
    from fewshot.emd.hierarchy import crm_scores, hierarchy_metrics, lca_heights
    severity = lca_heights(small_class_tree(), 3)
    scores = torch.tensor([[0.10, 0.70, 0.20],     # label 0: top-1 c1 (severity 1), top-2 c1, c2 (1, 3)
                           [0.50, 0.20, 0.30],     # label 2: top-1 c0 (3), top-2 c0, c2 (3, 0)
                           [0.15, 0.60, 0.25]])    # label 1: top-1 right (0), top-2 c1, c2 (0, 3)
    labels = torch.tensor([0, 2, 1])
    got = hierarchy_metrics(scores, labels, severity, k=2)
    assert got["top1_error"] == pytest.approx(200 / 3)
    assert got["mistake_severity"] == pytest.approx(2.0)          # (1 + 3) / 2 mistakes
    assert got["hdist_at_1"] == pytest.approx(4 / 3)
    assert got["hdist_at_2"] == pytest.approx(10 / 6)
    # CRM: expected LCA height of answering k; [0.44, 0.10, 0.46] risks 1.48, 1.82, 1.62 -> c0
    prob = torch.tensor([[0.44, 0.10, 0.46]], dtype=torch.float64)
    torch.testing.assert_close(-crm_scores(prob, severity), torch.tensor([[1.48, 1.82, 1.62]], dtype=torch.float64))
    assert hierarchy_metrics(crm_scores(prob, severity), torch.tensor([0]), severity, k=1)["top1_error"] == 0
    assert hierarchy_metrics(prob, torch.tensor([0]), severity, k=1)["mistake_severity"] == 3.0
    with pytest.raises(EMDInputError, match="k must be in 1..3"):
        hierarchy_metrics(scores, labels, severity, k=4)


def test_soft_labels_and_hxe_by_hand():
    from fewshot.emd.hierarchy import HXELoss, lca_heights, soft_labels
    tree = small_class_tree()
    severity = lca_heights(tree, 3)
    target = soft_labels(torch.tensor([0]), severity, beta=3.0)[0]
    expected = torch.tensor([1.0, np.exp(-1.0), np.exp(-3.0)], dtype=torch.float64)
    torch.testing.assert_close(target, expected / expected.sum())
    logits = torch.tensor([[0.3, -1.2, 0.8], [2.0, 0.1, -0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    # alpha 0: the terms telescope to -log p_y, cross-entropy
    torch.testing.assert_close(HXELoss(tree, 3, 0.0)(logits, labels),
                               torch.nn.functional.cross_entropy(logits, labels))
    # alpha 0.5, weights exp(-alpha depth): depths A 1, B 2, c0 2, c1 2, c2 3
    # label 0 -> -(e^-1 log p0/(p0+p1) + e^-0.5 log(p0+p1)); label 2 -> -(e^-1.5 log p2/p2 + e^-1 log p2)
    p = logits.softmax(-1)
    first = -(np.exp(-1.0) * torch.log(p[0, 0] / (p[0, 0] + p[0, 1])) + np.exp(-0.5) * torch.log(p[0, 0] + p[0, 1]))
    second = -(np.exp(-1.0) * torch.log(p[1, 2]))
    torch.testing.assert_close(HXELoss(tree, 3, 0.5)(logits, labels), (first + second) / 2)


def test_sinkhorn_onehot_loss_gradient_is_the_converged_sinkhorn_dual():
    """The paper's SD gradient log(u) / lambda: for a one-hot target the zero columns drop out,
    and POT's Sinkhorn on the remaining column gives u; centred, it is the loss's gradient."""
    from fewshot.emd.hierarchy import sinkhorn_onehot_loss
    tree = small_class_tree()
    cost = tree.distances()[:3, :3]
    g = torch.Generator().manual_seed(3)
    prob = torch.rand(4, 3, generator=g, dtype=torch.float64).softmax(-1)
    labels = torch.tensor([0, 1, 2, 1])
    lam = 2.0
    pg = prob.clone().requires_grad_(True)
    value = sinkhorn_onehot_loss(pg, labels, cost, lam)
    grad, = torch.autograd.grad(value.sum(), pg)
    for i, y in enumerate(labels.tolist()):
        M = cost[:, y:y + 1].numpy()
        plan, log = ot.sinkhorn(prob[i].numpy(), np.ones(1), M, reg=1 / lam, log=True, stopThr=1e-14)
        assert value[i].item() == pytest.approx(float((plan * M).sum()), abs=1e-12)
        ref = np.log(log["u"]) / lam
        np.testing.assert_allclose(grad[i].numpy(), ref - ref.mean(), rtol=0, atol=1e-10)
