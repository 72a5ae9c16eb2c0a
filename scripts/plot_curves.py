"""Learning curves of a recipe run against wall-clock time, as one PNG.

Reads the TensorBoard scalars that ``train.py`` writes (``val/accuracy`` of every stage
folder under RUN: ``pretrain``, ``meta``, ``protonet/meta``, ...) and draws validation
accuracy against the minutes since the first stage started, so one sees where the time
goes and what each stage buys. Final evaluation results (``*_val_1shot.json`` in RUN)
are marked at the right edge.

    python scripts/plot_curves.py RUN --out RUN/curves.png
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

LABELS = {"pretrain": "pretraining (DeepEMD-FCN val)", "meta": "DeepEMD-FCN meta-training",
          "protonet/meta": "ProtoNet meta-training"}
# published Conv-4 numbers on miniImageNet test (ProtoNet; DeepEMD, TPAMI): --reference mini
REFERENCES = {"mini": [(49.42, "ProtoNet Conv-4, published (test)"),
                       (52.15, "DeepEMD Conv-4, published (test)")]}


def read_curves(run: str):
    """{stage folder: (first wall time, [(wall time, step, accuracy)])} for every tb/ under run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves = {}
    for tb in sorted(glob.glob(os.path.join(run, "**", "tb"), recursive=True)):
        ea = EventAccumulator(tb, size_guidance={"scalars": 0})
        ea.Reload()
        if "val/accuracy" not in ea.Tags()["scalars"]:
            continue
        name = os.path.relpath(os.path.dirname(tb), run)
        points = [(e.wall_time, e.step, e.value) for e in ea.Scalars("val/accuracy")]
        curves[name] = (ea.FirstEventTimestamp(), points)
    return curves


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a recipe's output folder")
    parser.add_argument("--out", help="PNG path (default RUN/curves.png)")
    parser.add_argument("--title", default="miniImageNet val, 5-way 1-shot, Conv-4, 2 CPU cores")
    parser.add_argument("--reference", choices=sorted(REFERENCES),
                        help="draw the published numbers of this benchmark as lines")
    args = parser.parse_args(argv)
    curves = read_curves(args.run)
    if not curves:
        print(f"error: no TensorBoard val/accuracy scalars under {args.run!r}", file=sys.stderr)
        return 2
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min(first for first, _ in curves.values())
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    end = 0.0
    for name, (_, points) in sorted(curves.items(), key=lambda item: item[1][0]):
        minutes = [(t - t0) / 60 for t, _, _ in points]
        end = max(end, minutes[-1])
        ax.plot(minutes, [a for _, _, a in points], marker="o", ms=3,
                label=LABELS.get(name, name))
    for value, text in REFERENCES.get(args.reference, []):
        ax.axhline(value, color="grey", lw=0.8, ls="--")
        ax.text(0.5, value + 0.3, text, fontsize=7, color="grey")
    results = [json.load(open(path)) | {"name": os.path.basename(path)[:-len("_val_1shot.json")]}
               for path in sorted(glob.glob(os.path.join(args.run, "*_val_1shot.json")))]
    label_at = None                  # labels from the top down, at least 0.45 points apart
    for result in sorted(results, key=lambda r: -r["accuracy"]):
        ax.errorbar([end * 1.04], [result["accuracy"]], yerr=[result["ci95"]], fmt="s", ms=4, capsize=2)
        label_at = result["accuracy"] if label_at is None else min(result["accuracy"], label_at - 0.45)
        ax.annotate(f"{result['name']} {result['accuracy']:.1f}", (end * 1.05, label_at), fontsize=7,
                    va="center")
    ax.set_xlabel("wall-clock minutes since pretraining started")
    ax.set_ylabel("val accuracy (%)")
    ax.set_title(args.title, fontsize=10)
    ax.set_xlim(0, end * 1.3 + 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    out = args.out or os.path.join(args.run, "curves.png")
    fig.savefig(out)
    print(f"learning curves written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
