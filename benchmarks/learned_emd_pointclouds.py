"""The learned EMD on real point clouds against the exact EMD: quality and speed, one run.

Quality (``--sizes``, real ModelNet40 validation shapes, ``--pairs`` random pairs of distinct
shapes per size, ``n`` random points of each, uniform weights): Pearson, Spearman and Kendall
correlation of each estimate with the exact EMD, mean relative error, and the median cosine of
d value / d x with the exact gradient (the optimal plan through the Euclidean cost), for the
learned EMD (each ``--model``), Sinkhorn and Chamfer; on shapes of classes seen in training
and of the held-out classes (the last ``--hold-out-classes`` of the class list, as
``scripts/train_learned_emd.py --modelnet`` leaves them out).

Speed (``--speed-sizes``; above 1,024 points the real clouds are upsampled: each point
repeated with Gaussian jitter of 0.005, said so in the rows): milliseconds per pair, forward
alone and forward+backward, one pair and a batch of ``--batch`` pairs, for the learned EMD,
exact (engines simplex, pot and assignment), Hungarian (scipy's ``linear_sum_assignment``; no
gradient), Sinkhorn and Chamfer; each method up to its own size cap (``--max-size``).

Memory (``--memory-sizes``): how far the peak resident memory of a fresh process grows over
one forward+backward of the learned EMD on a batch of ``--batch`` pairs (after the model is
loaded), for each learned model; memory depends only on the sizes, so the clouds are random.

    python benchmarks/learned_emd_pointclouds.py --data-root PATH/modelnet40 \\
        --model pointclouds --model cosine --model pc=runs/learned_pc.pt --json benchmarks/learned_emd_pointclouds.json
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from scipy import stats  # noqa: E402

from _common import write_results  # noqa: E402
from fewshot import emd  # noqa: E402
from fewshot.data.pointclouds import load_modelnet40, sample_points, validation_split  # noqa: E402


def chamfer(x, y):
    d = torch.cdist(x, y).square()
    return d.amin(2).mean(1) + d.amin(1).mean(1)


def uniform(x):
    return torch.full(x.shape[:2], 1.0 / x.shape[1], dtype=x.dtype)


def exact(x, y, engine="auto"):
    return emd.solve(torch.cdist(x, y), uniform(x), uniform(y), solver="exact", engine=engine).value


def hungarian(x, y):
    from scipy.optimize import linear_sum_assignment
    out = []
    for xi, yi in zip(x, y):
        c = torch.cdist(xi[None], yi[None])[0].detach().double().numpy()
        r, k = linear_sum_assignment(c)
        out.append(c[r, k].mean())
    return torch.tensor(out, dtype=x.dtype)


def methods(models, epsilon, gradients=("plan",)):
    """name -> fn(x, y) -> value [B]; a learned model once per gradient mode (``plan``, the
    default of ``learned_emd``, keeps the model's name; others add theirs)."""
    table = {(name if mode == "plan" else f"{name[:-1]}, {mode} gradient)"):
             (lambda x, y, p=path, m=mode: emd.learned_emd(x, y, checkpoint=p, gradient=m).value)
             for name, path in models.items() for mode in gradients}
    sinkhorn = emd.make_solver("sinkhorn", {"epsilon": epsilon, "max_iter": 200, "on_unconverged": "ignore"})
    table.update({
        "exact (simplex)": lambda x, y: exact(x, y, "simplex"),
        "exact (pot)": lambda x, y: exact(x, y, "pot"),
        "exact (assignment)": lambda x, y: exact(x, y, "assignment"),
        "hungarian": hungarian,
        "sinkhorn": lambda x, y: emd.solve(torch.cdist(x, y), uniform(x), uniform(y), solver=sinkhorn).value,
        "chamfer": chamfer,
    })
    return table


def pairs(points: torch.Tensor, n_pairs: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(0, len(points), (n_pairs,), generator=g)
    j = (i + 1 + torch.randint(0, len(points) - 1, (n_pairs,), generator=g)) % len(points)
    return sample_points(points[i], n, g), sample_points(points[j], n, g)


def quality(fn, x, y, ref_value, ref_grad):
    xr = x.clone().requires_grad_(True)
    value = fn(xr, y)
    value.sum().backward()
    v, e = value.detach().double(), ref_value.double()
    cos = torch.nn.functional.cosine_similarity(xr.grad.flatten(1).double(), ref_grad.flatten(1), dim=1)
    return {"pearson": float(stats.pearsonr(v, e)[0]), "spearman": float(stats.spearmanr(v, e)[0]),
            "kendall": float(stats.kendalltau(v, e)[0]),
            "mean_relative_error": float(((v - e).abs() / e).mean()),
            "median_gradient_cosine": float(cos.median())}


def timed(fn, repeat):
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def speed(fn, x, y, backward: bool, repeat: int):
    def run():
        if backward:
            xr = x.clone().requires_grad_(True)
            fn(xr, y).sum().backward()
        else:
            with torch.no_grad():
                fn(x, y)
    run()                                                      # warm-up (compilation, model load)
    return 1e3 * timed(run, repeat) / len(x)


_MEMORY = """
import resource, sys, torch
from fewshot import emd
n, batch, path, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
x, y = torch.rand(batch, n, 3, generator=g), torch.rand(batch, n, 3, generator=g)
emd.learned_emd(x[:1, :8], y[:1, :8], checkpoint=path)           # the model loaded first
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
emd.learned_emd(x.requires_grad_(True), y, checkpoint=path, gradient=mode).value.sum().backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""


def peak_growth_mb(n: int, batch: int, checkpoint: str, gradient: str) -> float:
    """Peak resident memory growth (MB) of one learned forward+backward in a fresh process."""
    import subprocess
    out = subprocess.run([sys.executable, "-c", _MEMORY, str(n), str(batch), checkpoint, gradient], check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return float(out.stdout.split()[-1])


def upsample(points: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    reps = math.ceil(n / points.shape[1])
    big = points.repeat(1, reps, 1)
    big = big + 0.005 * torch.randn(big.shape, generator=g) * (torch.arange(big.shape[1]) >= points.shape[1])[:, None]
    return big[:, :n]


def speed_table(speed_rows) -> list:
    """The speed table's lines (see :func:`markdown`)."""
    sizes = sorted({r["points"] for r in speed_rows})
    names = list(dict.fromkeys(r["method"] for r in speed_rows))
    out = ["", "ms per pair, one pair, forward (forward+backward); x = fastest exact method / method (forward)",
            "", "| method | " + " | ".join(f"{n}{'*' if n > 1024 else ''}" for n in sizes) + " |",
            "|---|" + "---|" * len(sizes)]
    def ms(name, n, backward, key="ms_per_pair_single"):
        hit = [r[key] for r in speed_rows if r["method"] == name and r["points"] == n and r["backward"] == backward]
        return hit[0] if hit and hit[0] is not None else None
    for name in names:
        cells = []
        for n in sizes:
            fwd, bwd = ms(name, n, False), ms(name, n, True)
            exact_ms = [ms(e, n, False) for e in names
                        if (e.startswith("exact") or e == "hungarian") and ms(e, n, False) is not None]
            if fwd is None:
                cells.append("-")
                continue
            ratio = f", x{min(exact_ms) / fwd:.2g}" if exact_ms else ""
            cells.append(f"{fwd:.3g}" + (f" ({bwd:.3g})" if bwd is not None else "") + ratio)
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("* real clouds upsampled by jitter above 1,024 points")
    return out


def markdown(rows) -> str:
    """The quality table and the speed table (with the time of the fastest exact method, an
    engine of ``exact`` or Hungarian, over each method's: > 1 means faster than all) of ``rows``."""
    out = ["| points | shapes | method | Pearson | Spearman | Kendall | mean rel. error | median grad. cosine |",
           "|---|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["kind"] == "quality"):
        out.append(f"| {r['points']} | {r['shapes']} | {r['method']} | {r['pearson']:.4f} | {r['spearman']:.4f} | "
                   f"{r['kendall']:.3f} | {100 * r['mean_relative_error']:.1f}% | {r['median_gradient_cosine']:.3f} |")
    speed_rows = [r for r in rows if r["kind"] == "speed"]
    if speed_rows:
        out += speed_table(speed_rows)
    for r in (r for r in rows if r["kind"] == "memory"):
        out.append(f"- {r['method']}, {r['gradient']} gradient: forward+backward of {r['batch']} pairs at {r['points']} points: "
                   f"peak memory +{r['peak_growth_mb']:.0f} MB")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--model", action="append", default=None,
                        help="NAME=CHECKPOINT of a learned model, or a shipped model's name "
                             "(default: every shipped model)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[128, 256, 512, 1024], help="quality (none: skip)")
    parser.add_argument("--speed-sizes", type=int, nargs="*", default=[128, 256, 512, 1024, 2048, 4096, 8192],
                        help="speed (none: skip)")
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[1024, 2048],
                        help="peak memory of a learned forward+backward of --batch pairs (none: skip)")
    parser.add_argument("--gradient", nargs="+", default=["plan", "autograd"], choices=["plan", "autograd"],
                        help="the learned EMD's gradient modes (a row for each in every table)")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hold-out-classes", type=int, default=10)
    parser.add_argument("--epsilon", type=float, default=0.01)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-size", action="append", default=[],
                        help="METHOD=N: time METHOD only up to N points (e.g. hungarian=4096)")
    parser.add_argument("--batched-up-to", type=int, default=2048,
                        help="time batches of --batch pairs only up to this many points (memory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    models = {}
    for item in args.model or list(emd.LEARNED_MODELS):
        name, _, path = item.partition("=")
        models[f"learned ({name})"] = path or name
    caps = {k: int(v) for k, v in (c.split("=") for c in args.max_size)}
    clouds = load_modelnet40(args.data_root, seed=args.seed)
    _, val = validation_split(clouds)
    held = clouds.classes[len(clouds.classes) - args.hold_out_classes:]
    groups = {"seen classes": val.of_classes([c for c in clouds.classes if c not in held]),
              "held-out classes": val.of_classes(held)}
    table = methods(models, args.epsilon, args.gradient)
    rows = []
    for n in args.sizes:
        for group, shapes in groups.items():
            x, y = pairs(shapes.points.double(), args.pairs, n, args.seed + n)
            xr = x.clone().requires_grad_(True)
            ref = exact(xr, y)
            ref.sum().backward()
            for name in [m for m in table if m.startswith("learned")] + ["sinkhorn", "chamfer"]:
                row = {"kind": "quality", "points": n, "shapes": group, "pairs": args.pairs, "method": name,
                       **quality(table[name], x.float() if name.startswith("learned") else x, y.float()
                                 if name.startswith("learned") else y, ref.detach(), xr.grad)}
                rows.append(row)
                print(row, flush=True)
    g = torch.Generator().manual_seed(args.seed)
    base = groups["seen classes"].points
    for n in args.speed_sizes:
        x, y = pairs(base, args.batch, min(n, base.shape[1]), args.seed)
        if n > base.shape[1]:
            x, y = upsample(x, n, g), upsample(y, n, g)
        for name, fn in table.items():
            if n > caps.get(name, math.inf):
                continue
            for backward in (False, True):
                if backward and name == "hungarian":
                    continue
                row = {"kind": "speed", "points": n, "upsampled": n > base.shape[1], "method": name,
                       "backward": backward,
                       "ms_per_pair_single": speed(fn, x[:1], y[:1], backward, args.repeat),
                       "ms_per_pair_batched": (speed(fn, x, y, backward, args.repeat)
                                               if n <= args.batched_up_to else None), "batch": args.batch}
                rows.append(row)
                print(row, flush=True)
    for n in args.memory_sizes:
        for (name, path), mode in itertools.product(models.items(), args.gradient):
            row = {"kind": "memory", "points": n, "method": name, "gradient": mode, "batch": args.batch,
                   "peak_growth_mb": peak_growth_mb(n, args.batch, path, mode)}
            rows.append(row)
            print(row, flush=True)
    write_results(args.json, rows, models=models, epsilon=args.epsilon)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
