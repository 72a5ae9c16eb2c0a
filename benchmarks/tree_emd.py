"""EMD on the WordNet tree of the 1,000 ImageNet classes: the closed form against Sinkhorn
(Martinez et al. 2016, Table 1 and Fig. 3), in one run.

Histograms live on the 1,000 classes (the leaves of the 1,372-node tree,
configs/trees/imagenet_wordnet.json); the ground metric of Sinkhorn and of the LP is the tree
metric between classes (WordNet path lengths, up to 27 edges), so the exact EMD equals the
closed-form tree EMD (rho = 1). Pairs (``--batch``, default 512): ``random`` (uniform
histograms, normalised) and ``model`` (softmax of random logits against one-hot labels).

Timed (value and the gradient with respect to p, median of ``--repeats`` after a warm-up):
* ``tree_emd`` rho = 1 (EMD) and rho = 2 (EMD^2): the closed form with the dirt-conserving
  gradient, by the compiled CPU kernel (the default on the CPU) and by the sparse ancestor
  products (any device); the previous implementation's dense ancestor-matrix product
  ([B, K] x [K, K] forward and backward) for comparison;
* Sinkhorn at 10, 100 and 1,000 iterations, float32 and float64, lambda = ``--lam`` per edge:
  ``kernel``, the paper's iteration (u = a / K v, v = b / K^T u, K = exp(-lambda M)), value
  sum u (K * M) v and the gradient its dual potential log(u) / lambda (centred); and
  ``fewshot``, this project's log-domain solver (``emd.solve(..., solver="sinkhorn")``, fixed
  iterations, its potential f as the gradient; ``engine`` auto, which runs products with the
  kernel while the costs' span over epsilon allows it, and ``log``, log-sum-exp every step,
  at 10 iterations);
* the exact LP (POT's network simplex per pair) on ``--lp-pairs`` pairs, its values compared
  with the closed form.

Fig. 3 analogue (``--sweep-batch`` random pairs, ``--sweep-iterations``): the ratio
SD / EMD (SD = the transport cost <P, M> of the Sinkhorn plan) and the angle between the
Sinkhorn gradient and the closed-form EMD gradient against lambda, for both iterations in
float32 and float64; NaN where an iteration broke down (division by an underflowed kernel).

    python benchmarks/tree_emd.py --json benchmarks/tree_emd.json --png docs/tree_emd_sinkhorn.png
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import write_results  # noqa: E402
from fewshot import emd  # noqa: E402
from fewshot.emd.hierarchy import ClassTree, tree_emd  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def pairs(kind: str, B: int, C: int, K: int, dtype, seed: int = 0):
    """p [B, K], q [B, K] with mass on the C classes (the first C nodes)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        p, q = torch.rand(B, C, generator=g, dtype=torch.float64), torch.rand(B, C, generator=g, dtype=torch.float64)
        p, q = p / p.sum(1, keepdim=True), q / q.sum(1, keepdim=True)
    else:
        p = (3 * torch.randn(B, C, generator=g, dtype=torch.float64)).softmax(-1)
        q = torch.zeros(B, C, dtype=torch.float64).scatter_(1, torch.randint(0, C, (B, 1), generator=g), 1.0)
    pad = torch.zeros(B, K - C, dtype=torch.float64)
    return torch.cat([p, pad], 1).to(dtype), torch.cat([q, pad], 1).to(dtype)


def timed(fn, repeats: int, warm_up: bool = True) -> float:
    if warm_up:          # compilation, thread pools, first touch of the buffers
        fn()
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def kernel_sinkhorn(M: torch.Tensor, a: torch.Tensor, b: torch.Tensor, lam: float, n_iter: int):
    """The paper's Sinkhorn iteration on M [C, C] for a, b [B, C]: value [B] = <P, M> and the
    gradient in a (dual potential log(u) / lambda, centred)."""
    K = torch.exp(-lam * M)
    KM = K * M
    v = torch.ones_like(b)
    for _ in range(n_iter):
        u = a / (v @ K.t())
        v = b / (u @ K)
    value = (u * (v @ KM.t())).sum(1)
    alpha = torch.log(u) / lam
    return value, alpha - alpha.mean(1, keepdim=True)


def fewshot_sinkhorn(M: torch.Tensor, a: torch.Tensor, b: torch.Tensor, lam: float, n_iter: int,
                     engine: str = "auto", init=None):
    """This project's solver at a fixed number of iterations: value, centred f, the result."""
    r = emd.solve(M[None].expand(len(a), -1, -1), a, b, solver="sinkhorn", epsilon=1 / lam,
                  max_iter=n_iter, tol=1e-300, on_unconverged="ignore", gradient="unrolled",
                  return_plan=False, engine=engine, init=init)
    f = r.potentials[0]
    return r.value, f - f.mean(1, keepdim=True), r


def emd_gradient(tree, p, q):
    """Closed-form EMD (rho = 1) value [B] and its dirt-conserving gradient [B, K] in p."""
    p = p.detach().clone().requires_grad_(True)
    value = tree_emd(p, q, tree, rho=1.0)
    grad, = torch.autograd.grad(value.sum(), p)
    return value.detach(), grad


def angle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    cos = (u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1))
    return torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", default=os.path.join(ROOT, "configs", "trees", "imagenet_wordnet.json"))
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lam", type=float, default=1.0, help="Sinkhorn lambda (1 / epsilon) per tree edge")
    parser.add_argument("--iterations", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--log-iterations", type=int, default=10)
    parser.add_argument("--log-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--lp-pairs", type=int, default=8)
    parser.add_argument("--sweep-batch", type=int, default=16)
    parser.add_argument("--sweep-lams", type=float, nargs="+", default=[0.1, 0.3, 1, 2, 5, 10, 20, 50])
    parser.add_argument("--sweep-iterations", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--sweep-log-max", type=int, default=100,
                        help="most iterations swept where the log-sum-exp engine runs")
    parser.add_argument("--json", default="")
    parser.add_argument("--png", default="")
    args = parser.parse_args()

    tree = ClassTree.from_json(args.tree)
    C, K = args.classes, len(tree)
    dist = tree.distances()[:C, :C]
    rows = []

    def row(**kw):
        rows.append(kw)
        print(kw, flush=True)

    # ---- Table 1: value + gradient times for the minibatch
    for dtype in (torch.float64, torch.float32):
        name = str(dtype).split(".")[1]
        M = dist.to(dtype)
        for kind in ("random", "model"):
            p, q = pairs(kind, args.batch, C, K, dtype)
            pg = p.clone().requires_grad_(True)
            for rho, compiled in ((1.0, True), (2.0, True), (2.0, False)):
                ms = timed(lambda: torch.autograd.grad(tree_emd(pg, q, tree, rho=rho, compiled=compiled).sum(), pg),
                           args.repeats)
                row(entry=f"tree_emd rho={rho:g}" + ("" if compiled else " (sparse products, any device)"),
                    pairs=kind, dtype=name, iterations=None, ms=ms)
            A = tree.ancestor_matrix().to(dtype)
            lengths = tree.lengths.to(dtype)

            def dense():
                S = (pg - q) @ A
                value = (lengths * S.abs().pow(2)).sum(-1)
                torch.autograd.grad(value.sum(), pg)
            row(entry="dense ancestor product rho=2 (previous)", pairs=kind, dtype=name, iterations=None,
                ms=timed(dense, args.repeats))
        p, q = pairs("random", args.batch, C, K, dtype)
        a, b = p[:, :C].contiguous(), q[:, :C].contiguous()
        for n in args.iterations:
            reps, warm = (args.repeats, True) if n <= 100 else (1, False)   # long runs: one, already warm
            row(entry="sinkhorn kernel (paper)", pairs="random", dtype=name, iterations=n, lam=args.lam,
                ms=timed(lambda: kernel_sinkhorn(M, a, b, args.lam, n), reps, warm))
            row(entry="sinkhorn fewshot (engine auto)", pairs="random", dtype=name, iterations=n, lam=args.lam,
                engine=fewshot_sinkhorn(M, a, b, args.lam, 1)[2].info["engine"],
                ms=timed(lambda: fewshot_sinkhorn(M, a, b, args.lam, n), reps, warm))
        # log-sum-exp over [B, 1000, 1000] every half-step: measured on --log-batch pairs (memory)
        la, lb = a[:args.log_batch], b[:args.log_batch]
        row(entry=f"sinkhorn fewshot (engine log), batch {args.log_batch}", pairs="random", dtype=name,
            iterations=args.log_iterations, lam=args.lam,
            ms=timed(lambda: fewshot_sinkhorn(M, la, lb, args.lam, args.log_iterations, "log"), 1, False))

    # ---- the exact LP on the tree metric, against the closed form
    import ot
    p, q = pairs("random", args.lp_pairs, C, K, torch.float64, seed=1)
    closed = tree_emd(p, q, tree, rho=1.0)
    D = dist.numpy()
    t = time.perf_counter()
    lp = [ot.emd2(p[i, :C].numpy(), q[i, :C].numpy(), D) for i in range(args.lp_pairs)]
    per_pair = 1000 * (time.perf_counter() - t) / args.lp_pairs
    row(entry="exact LP (POT network simplex, per pair)", pairs="random", dtype="float64", iterations=None,
        ms=per_pair, ms_for_batch_estimate=per_pair * args.batch,
        max_abs_diff_to_closed_form=float(np.max(np.abs(np.array(lp) - closed.numpy()))))

    # ---- Fig. 3: SD / EMD and gradient angle against lambda
    sweep = []
    p64, q64 = pairs("random", args.sweep_batch, C, K, torch.float64, seed=2)
    exact, grad = emd_gradient(tree, p64, q64)
    grad = grad[:, :C]
    for dtype in (torch.float64, torch.float32):
        name = str(dtype).split(".")[1]
        a, b, M = p64[:, :C].to(dtype).contiguous(), q64[:, :C].to(dtype).contiguous(), dist.to(dtype)
        for lam in args.sweep_lams:
            for form in ("kernel", "fewshot"):
                done, state, engine = 0, None, ""
                for n in sorted(args.sweep_iterations):
                    if engine == "log" and n > args.sweep_log_max:
                        break          # log-sum-exp iterations over [B, C, C]: minutes each
                    t = time.perf_counter()
                    with np.errstate(all="ignore"):
                        if form == "kernel":
                            value, g = kernel_sinkhorn(M, a, b, lam, n)
                            engine = "kernel"
                        else:          # continue from the previous count's potentials
                            value, g, r = fewshot_sinkhorn(M, a, b, lam, n - done, init=state)
                            state, done, engine = r.info["warm_start"], n, r.info["engine"]
                    ratio = (value.double() / exact)
                    ang = angle(g.double(), grad)
                    ok = torch.isfinite(ratio) & torch.isfinite(ang)
                    point = dict(form=form, dtype=name, lam=lam, iterations=n, engine=engine,
                                 sd_over_emd=float(ratio[ok].mean()) if ok.any() else float("nan"),
                                 angle_deg=float(ang[ok].mean()) if ok.any() else float("nan"),
                                 broken=int((~ok).sum()), seconds=round(time.perf_counter() - t, 2))
                    sweep.append(point)
                    print(point, flush=True)
    if args.json:
        write_results(args.json, rows, tree=os.path.relpath(args.tree, ROOT), classes=C, nodes=K,
                      batch=args.batch, sweep=sweep)
    print(table(rows))
    if args.png:
        plot(sweep, args.png)


def table(rows) -> str:
    out = ["| entry | pairs | dtype | iterations | value + gradient ms | x closed-form EMD^2 (same dtype, random pairs) |",
           "|---|---|---|---|---|---|"]
    base = {r["dtype"]: r["ms"] for r in rows if r["entry"] == "tree_emd rho=2" and r["pairs"] == "random"}
    for r in rows:
        it = "" if r["iterations"] is None else r["iterations"]
        ratio = r["ms"] / base[r["dtype"]] if r["dtype"] in base else float("nan")
        extra = f" (engine {r['engine']})" if "engine" in r else ""
        out.append(f"| {r['entry']}{extra} | {r['pairs']} | {r['dtype']} | {it} | {r['ms']:.2f} | {ratio:.0f}x |")
    return "\n".join(out)


def plot(sweep, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    styles = {("kernel", "float64"): ("tab:blue", "-"), ("kernel", "float32"): ("tab:blue", ":"),
              ("fewshot", "float64"): ("tab:red", "-"), ("fewshot", "float32"): ("tab:red", ":")}
    iterations = sorted({p["iterations"] for p in sweep})
    markers = dict(zip(iterations, "os^v"))
    for (form, dtype), (color, ls) in styles.items():
        for n in iterations:
            pts = [p for p in sweep if p["form"] == form and p["dtype"] == dtype and p["iterations"] == n]
            lam = [p["lam"] for p in pts]
            label = f"{'paper kernel' if form == 'kernel' else 'fewshot log-domain'} {dtype}, {n} it."
            axes[0].plot(lam, [p["sd_over_emd"] for p in pts], color=color, ls=ls, marker=markers[n], ms=4,
                         label=label)
            axes[1].plot(lam, [p["angle_deg"] for p in pts], color=color, ls=ls, marker=markers[n], ms=4)
            broken = [p["lam"] for p in pts if p["broken"]]
            for ax in axes:       # pairs where the iteration broke down (NaN): crosses on the axis
                ax.plot(broken, [0] * len(broken), ls="none", marker="x", color=color, ms=7)
    for ax, ylabel in zip(axes, ("SD / EMD", "angle between SD and EMD gradients (deg)")):
        ax.set_xscale("log")
        ax.set_xlabel("lambda (1 / epsilon, per WordNet edge)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].axhline(1.0, color="k", lw=0.6)
    axes[0].set_ylim(bottom=0)
    axes[1].set_ylim(bottom=0)
    axes[0].legend(fontsize=6.5)
    fig.suptitle("Sinkhorn on the 1,000-class WordNet tree (x on the axis: the iteration broke down, NaN, "
                 "for some pairs)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"written {path}")


if __name__ == "__main__":
    main()
