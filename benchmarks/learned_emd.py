"""Held-out quality and speed of the ``learned`` EMD solver against ``exact`` and ``sinkhorn``.

For the training size and sets 4x and 8x larger (same generator, new seed): Pearson,
Spearman and Kendall correlation of the learned value with the exact EMD, mean
relative error, the cosine similarity of d value / d cost with the exact gradient (the
exact plan), and forward+backward time of learned, exact and sinkhorn in the same run.

    python benchmarks/learned_emd.py --checkpoint runs/learned_emd.pt --nodes 25 --batch 375
"""
from __future__ import annotations

import argparse
import os
import sys
import time

# As in eval.py: torch's OpenMP threads must not spin on the cores the EMD layer's threads use.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from scipy import stats


from _common import write_results  # noqa: E402
from fewshot.emd import solve  # noqa: E402
from fewshot.emd._learned import random_problems  # noqa: E402


def timed(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def value_and_grad(cost, a, b, solver, **options):
    c = cost.clone().requires_grad_(True)
    value = solve(c, a, b, solver=solver, **options).value
    grad, = torch.autograd.grad(value.sum(), c)
    return value.detach(), grad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="", help="a learned-EMD checkpoint (default: the "
                        "model shipped with the package)")
    parser.add_argument("--nodes", type=int, default=25, help="the training size")
    parser.add_argument("--scales", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--batch", type=int, default=375)
    parser.add_argument("--kinds", nargs="+", default=["points", "cosine"])
    parser.add_argument("--json", default="benchmarks/learned_emd.json")
    args = parser.parse_args()
    rows = []
    for kind in args.kinds:
        for scale in args.scales:
            n = args.nodes * scale
            batch = max(8, args.batch // scale)
            g = torch.Generator().manual_seed(10_000 + n)
            cost, a, b = random_problems(batch, n, g, kind)
            ex_value, ex_grad = value_and_grad(cost.double(), a.double(), b.double(), "exact")
            le_value, le_grad = value_and_grad(cost, a, b, "learned", checkpoint=args.checkpoint)
            le_value, le_grad = le_value.double(), le_grad.double()
            cos = torch.nn.functional.cosine_similarity(le_grad.flatten(1), ex_grad.flatten(1)).mean()
            row = {"kind": kind, "nodes": n, "batch": batch,
                   "pearson": stats.pearsonr(le_value, ex_value)[0],
                   "spearman": stats.spearmanr(le_value, ex_value)[0],
                   "kendall": stats.kendalltau(le_value, ex_value)[0],
                   "relative_error": float(((le_value - ex_value) / ex_value).abs().mean()),
                   "gradient_cosine": float(cos)}
            c32, a32, b32 = cost, a, b
            row["learned_ms"] = timed(lambda: value_and_grad(c32, a32, b32, "learned", checkpoint=args.checkpoint))
            row["exact_ms"] = timed(lambda: value_and_grad(c32.double(), a32.double(), b32.double(), "exact"))
            row["sinkhorn_ms"] = timed(lambda: value_and_grad(c32, a32, b32, "sinkhorn"), repeat=1)
            rows.append(row)
            print(f"{kind:>7} n={n:<4} B={batch:<4} pearson {row['pearson']:.4f} spearman {row['spearman']:.4f} "
                  f"kendall {row['kendall']:.4f} rel.err {row['relative_error']:.4f} "
                  f"grad cos {row['gradient_cosine']:.3f} | fwd+bwd ms: learned {row['learned_ms']:.1f} "
                  f"exact {row['exact_ms']:.1f} sinkhorn {row['sinkhorn_ms']:.1f}", flush=True)
    write_results(args.json, rows, torch.device("cpu"), checkpoint=args.checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
