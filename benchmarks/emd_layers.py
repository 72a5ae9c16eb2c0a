"""Benchmark of the EMD layers against the exact LP, measured in one run.

For each solver, node count and batch: forward ms, forward+backward ms (through
``value``), peak memory, value error relative to ``exact`` and the L1 distance of the
plan to the exact plan (relative to the mass; 2 is the maximum). Entries:

- a registered solver by name (``exact`` uses its default compiled simplex engine);
- ``exact_pot``: the ``exact`` solver with ``engine=pot`` (POT's network simplex per problem);
- ``pot_emd2_loop``: POT's ``ot.emd2`` called in a Python loop with its torch backend;
- ``chain`` gets the problems' 64-d node vectors, ``learned`` the ``--learned-checkpoint``.

Timings are medians of ``--repeat`` runs and are reported next to ``exact`` as ratios
taken in the same run. Peak memory is the CUDA high-water mark of the row on a GPU
and the process's resident high-water mark (monotone over the run) on the CPU.

    python benchmarks/emd_layers.py                      # quick table
    python benchmarks/emd_layers.py --sizes 9 25 100 --batch 375 20 --solvers exact sinkhorn tree qpth
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

# As in eval.py: torch's OpenMP threads must not spin on the cores the EMD layer's threads use.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


from _common import write_results  # noqa: E402
from fewshot.emd import solve, spec  # noqa: E402


def problems(batch: int, n: int, dtype: torch.dtype, seed: int = 0, dim: int = 64):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(batch, n, dim, generator=g, dtype=torch.float64), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(batch, n, dim, generator=g, dtype=torch.float64), dim=-1)
    cost = 1 - x @ y.transpose(1, 2)
    a = torch.rand(batch, n, generator=g, dtype=torch.float64) + 0.05
    b = torch.rand(batch, n, generator=g, dtype=torch.float64) + 0.05
    a, b = a * n / a.sum(1, keepdim=True), b * n / b.sum(1, keepdim=True)
    b = b * a.sum(1, keepdim=True) / b.sum(1, keepdim=True)
    return cost.to(dtype), a.to(dtype), b.to(dtype), x.to(dtype), y.to(dtype)


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


ENTRIES = {"exact_pot": ("exact", {"engine": "pot"})}


def run_entry(name, cost, a, b, backward: bool, points=None):
    """Solve with entry ``name``; returns the EMDResult (None for ``pot_emd2_loop``).
    ``points`` (x, y) are the nodes, passed to solvers that need them (``chain``)."""
    if backward:
        cost, a, b = (t.clone().requires_grad_(True) for t in (cost, a, b))
    result = None
    if name == "pot_emd2_loop":
        value = pot_loop(cost, a, b)
    else:
        solver, options = ENTRIES.get(name, (name, {}))
        if spec(solver).needs_points:
            options = dict(options, x=points[0], y=points[1])
        result = solve(cost, a, b, solver=solver, **options)
        value = result.value
    if backward:
        value.sum().backward()
    return result


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--solvers", nargs="+", default=["exact", "exact_pot", "sinkhorn", "tree"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[9, 25])
    parser.add_argument("--batch", nargs="+", type=int, default=[375],
                        help="problems per call: 375 = 5-way 1-shot with 15 queries, 20 = one SFC step")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pot", action="store_true", help="also time ot.emd2 in a loop (torch backend)")
    parser.add_argument("--learned-checkpoint", help="checkpoint of the learned solver (entry 'learned')")
    parser.add_argument("--single-run", nargs="*", default=[], metavar="SOLVER",
                        help="solvers timed by one forward+backward call only (no warm-up, no "
                             "forward-only timing): for minutes-long solvers such as qpth")
    parser.add_argument("--json", default="benchmarks/emd_layers.json")
    args = parser.parse_args()
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    if args.learned_checkpoint:
        ENTRIES["learned"] = ("learned", {"checkpoint": args.learned_checkpoint})
    rows = []
    entries = list(args.solvers) + (["pot_emd2_loop"] if args.pot else [])
    for n in args.sizes:
        for batch in args.batch:
            cost, a, b, x, y = (t.to(device) for t in problems(batch, n, dtype))
            ref = solve(cost.double(), a.double(), b.double(), solver="exact")
            base = {}
            for name in entries:
                single = name in args.single_run
                if not single:
                    run_entry(name, cost, a, b, backward=True, points=(x, y))     # warm-up (compilation, caches)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)

                last = {}

                def forward():
                    run_entry(name, cost, a, b, backward=False, points=(x, y))
                    synchronize(device)

                def both():
                    last["result"] = run_entry(name, cost, a, b, backward=True, points=(x, y))
                    synchronize(device)

                if single:
                    fwd, fwdbwd = float("nan"), timed(both, 1)
                else:
                    fwd, fwdbwd = timed(forward, args.repeat), timed(both, args.repeat)
                row = {"solver": name, "nodes": n, "batch": batch, "dtype": args.dtype,
                       "device": str(device), "forward_ms": fwd, "forward_backward_ms": fwdbwd,
                       "peak_memory_mb": peak_memory_mb(device)}
                r = last["result"]
                if r is not None:
                    row["value_rel_error"] = float(((r.value.detach().double() - ref.value) / ref.value).abs().max())
                    row["plan_l1"] = float(((r.plan.detach().double() - ref.plan).abs().sum((1, 2)) / n).mean())
                if name == "exact":
                    base = row
                row["fwdbwd_vs_exact"] = fwdbwd / base["forward_backward_ms"] if base else None
                rows.append(row)
                print(f"{name:>14} n={n:<4} B={batch:<4} {args.dtype}: fwd {fwd:10.2f} ms  "
                      f"fwd+bwd {fwdbwd:10.2f} ms  x exact {row['fwdbwd_vs_exact'] or float('nan'):9.2f}  "
                      f"mem {row['peak_memory_mb']:7.0f} MB  "
                      f"value err {row.get('value_rel_error', float('nan')):.1e}  "
                      f"plan L1 {row.get('plan_l1', float('nan')):.3f}", flush=True)
    write_results(args.json, rows, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
