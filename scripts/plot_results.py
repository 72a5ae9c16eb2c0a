"""Results plots from ``eval.py`` JSON files: accuracy +- 95% CI per run, and accuracy
against evaluation time (the solver comparison), as one PNG.

    python scripts/plot_results.py R/deepemd_val_1shot.json R/protonet_val_1shot.json ... \
        --out docs/results.png [--labels "DeepEMD" "ProtoNet" ...]

Each file is one bar labelled by ``--labels`` or by its method, eval solver and shots;
the right panel places the same runs by seconds per episode (``seconds / episodes``,
log scale), so a cheaper solver with the same accuracy sits further left.
"""
from __future__ import annotations

import argparse
import json
import sys


def _label(result: dict) -> str:
    solver = result.get("eval_solver")
    return (f"{result.get('method', '?')}" + (f" ({solver})" if solver else "")
            + f", {result.get('n_shot', '?')}-shot")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", help="eval.py --result JSON files")
    parser.add_argument("--labels", nargs="+", help="one label per file")
    parser.add_argument("--title", default="")
    parser.add_argument("--out", required=True, help="PNG path")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.results):
        print(f"error: --labels has {len(args.labels)} entries for {len(args.results)} result files",
              file=sys.stderr)
        return 2
    rows = []
    for i, path in enumerate(args.results):
        try:
            result = json.load(open(path))
            acc, ci = float(result["accuracy"]), float(result["ci95"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"error: {path!r} is not an eval.py result ({e})", file=sys.stderr)
            return 2
        per_episode = float(result.get("seconds", float("nan"))) / max(1, int(result.get("episodes", 1)))
        rows.append((args.labels[i] if args.labels else _label(result), acc, ci, per_episode,
                     int(result.get("episodes", 0))))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 0.45 * len(rows) + 1.6), dpi=110,
                                      gridspec_kw={"width_ratios": [3, 2]})
    y = list(range(len(rows)))[::-1]
    left.barh(y, [r[1] for r in rows], xerr=[r[2] for r in rows], color="#4c72b0", capsize=3)
    left.set_yticks(y)
    left.set_yticklabels([f"{r[0]} ({r[4]} ep.)" for r in rows], fontsize=7)
    low = min(r[1] - r[2] for r in rows)
    left.set_xlim(max(0, low - 5), min(100, max(r[1] + r[2] for r in rows) + 3))
    for yy, r in zip(y, rows):
        left.text(r[1] + r[2] + 0.3, yy, f"{r[1]:.2f} +- {r[2]:.2f}", va="center", fontsize=7)
    left.set_xlabel("accuracy (%) +- 95% CI")
    right.errorbar([r[3] for r in rows], [r[1] for r in rows], yerr=[r[2] for r in rows], fmt="o",
                   ms=4, capsize=2)
    for r in rows:
        right.annotate(r[0], (r[3], r[1]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    right.set_xscale("log")
    right.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    right.set_xlabel("evaluation seconds per episode")
    right.set_ylabel("accuracy (%)")
    right.grid(alpha=0.3)
    if args.title:
        fig.suptitle(args.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"results plot written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
