"""Benchmark of the EMD layers against the exact LP, measured in one run.

For each solver, node count and batch: forward ms, forward+backward ms (through
``value``), value error relative to ``exact`` and the L1 distance of the plan to the
exact plan (relative to the mass; 2 is the maximum), plus POT's ``ot.emd2`` called in a
Python loop with its torch backend as an outside reference. Timings are medians of
``--repeat`` runs and are reported next to ``exact`` as ratios taken in the same run.

    python benchmarks/emd_layers.py                      # quick table
    python benchmarks/emd_layers.py --sizes 9 25 100 --batch 375 --solvers exact sinkhorn tree qpth
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fewshot.emd import solve  # noqa: E402


def problems(batch: int, n: int, dtype: torch.dtype, seed: int = 0, dim: int = 64):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(batch, n, dim, generator=g, dtype=torch.float64), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(batch, n, dim, generator=g, dtype=torch.float64), dim=-1)
    cost = 1 - x @ y.transpose(1, 2)
    a = torch.rand(batch, n, generator=g, dtype=torch.float64) + 0.05
    b = torch.rand(batch, n, generator=g, dtype=torch.float64) + 0.05
    a, b = a * n / a.sum(1, keepdim=True), b * n / b.sum(1, keepdim=True)
    return cost.to(dtype), a.to(dtype), (b * a.sum(1, keepdim=True) / b.sum(1, keepdim=True)).to(dtype)


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def pot_loop(cost, a, b):
    import ot
    values = [ot.emd2(a[i], b[i], cost[i]) for i in range(cost.shape[0])]
    return torch.stack(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--solvers", nargs="+", default=["exact", "sinkhorn", "tree"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[9, 25])
    parser.add_argument("--batch", type=int, default=375)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pot", action="store_true", help="also time ot.emd2 in a loop (torch backend)")
    parser.add_argument("--json", default="benchmarks/emd_layers.json")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    rows = []
    for n in args.sizes:
        cost, a, b = problems(args.batch, n, dtype)
        ref = solve(cost.double(), a.double(), b.double(), solver="exact")
        base = {}
        entries = list(args.solvers) + (["pot_emd2_loop"] if args.pot else [])
        for name in entries:
            def forward():
                if name == "pot_emd2_loop":
                    return pot_loop(cost, a, b)
                return solve(cost, a, b, solver=name).value

            def both():
                c = cost.clone().requires_grad_(True)
                x, y = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
                value = pot_loop(c, x, y) if name == "pot_emd2_loop" else solve(c, x, y, solver=name).value
                value.sum().backward()

            fwd, fwdbwd = timed(forward, args.repeat), timed(both, args.repeat)
            row = {"solver": name, "nodes": n, "batch": args.batch, "dtype": args.dtype,
                   "forward_ms": fwd, "forward_backward_ms": fwdbwd}
            if name != "pot_emd2_loop":
                r = solve(cost, a, b, solver=name)
                row["value_rel_error"] = float(((r.value.double() - ref.value) / ref.value).abs().max())
                row["plan_l1"] = float(((r.plan.double() - ref.plan).abs().sum((1, 2)) / n).mean())
            if name == "exact":
                base = row
            row["fwdbwd_vs_exact"] = fwdbwd / base["forward_backward_ms"] if base else None
            rows.append(row)
            print(f"{name:>14} n={n:<4} B={args.batch:<4} {args.dtype}: fwd {fwd:9.1f} ms  "
                  f"fwd+bwd {fwdbwd:9.1f} ms  x exact {row['fwdbwd_vs_exact'] or float('nan'):7.2f}  "
                  f"value err {row.get('value_rel_error', float('nan')):.1e}  "
                  f"plan L1 {row.get('plan_l1', float('nan')):.3f}", flush=True)
    meta = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
