"""Does a learned-EMD model hold across DeepEMD's settings? Agreement with ``exact`` per setting.

Settings (``--problems`` problems of ``--nodes`` nodes each, seeds never used in training):

* ``cosine``: 1 - cos of random ``width``-d vectors (``random_problems(kind="cosine")``) with
  ``random`` or ``uniform`` weights;
* ``cross-reference``: DeepEMD's own problems (``emd_problem``: centred 1 - cos and the
  cross-reference weights) of random non-negative node features of ``width`` channels;
* ``real``: with ``--checkpoint`` and ``--data-root``, DeepEMD problems between the node sets
  of pairs of real images of the split under a trained backbone (e.g. the shipped
  ``conv4-miniimagenet`` on miniImageNet val).

For each ``--model`` (a shipped learned model's name or NAME=PATH) and setting: Pearson,
Spearman and Kendall correlation with the exact EMD and the mean relative error.

    python benchmarks/learned_emd_robustness.py --model cosine --model new=runs/learned.pt \\
        --checkpoint conv4-miniimagenet --data-root PATH/miniimagenet --split val
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from scipy import stats  # noqa: E402

from _common import write_results  # noqa: E402
from fewshot import emd  # noqa: E402
from fewshot.emd._learned import random_problems  # noqa: E402
from fewshot.models.deepemd import emd_problem, random_emd_problems  # noqa: E402


def real(checkpoint: str, data_root: str, split: str, n_problems: int, seed: int):
    from fewshot.engine import load_trained
    from fewshot.engine.evaluate import encode_images
    from fewshot.engine.trainer import load_split
    config, model = load_trained(checkpoint, [f"data.root={data_root}"], device="cpu")
    model.eval()
    dataset = load_split(config, split, train=False)
    g = torch.Generator().manual_seed(seed)
    picked = torch.randperm(len(dataset), generator=g)[:2 * n_problems].tolist()
    feats = encode_images(model, dataset, picked, torch.device("cpu"), progress=False)   # [2P, C, M]
    cost, a, b = emd_problem(feats[:n_problems, None], feats[n_problems:, None], model.head.metric,
                             model.head.center)
    return cost[:, 0, 0].float(), a[:, 0, 0].float(), b[:, 0, 0].float()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=None,
                        help="a shipped learned model's name or NAME=PATH (default: cosine)")
    parser.add_argument("--nodes", type=int, default=25)
    parser.add_argument("--problems", type=int, default=400)
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 640])
    parser.add_argument("--checkpoint", help="a trained DeepEMD checkpoint or shipped name: real problems")
    parser.add_argument("--data-root")
    parser.add_argument("--split", default="val")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", default="benchmarks/learned_emd_robustness.json")
    args = parser.parse_args(argv)
    if bool(args.checkpoint) != bool(args.data_root):
        parser.error("--checkpoint and --data-root go together")
    models = {}
    for item in args.model or ["cosine"]:
        name, _, path = item.partition("=")
        models[name] = path or name
    g = torch.Generator().manual_seed(args.seed)
    settings = {}
    for width in args.widths:
        for weights in ("random", "uniform"):
            settings[f"cosine {width}-d, {weights} weights"] = random_problems(
                args.problems, args.nodes, g, kind="cosine", width=width, weights=weights)
        settings[f"cross-reference, {width}-d features"] = random_emd_problems(args.problems, args.nodes, width, g)
    if args.checkpoint:
        settings[f"real: {args.checkpoint} on {args.split}"] = real(args.checkpoint, args.data_root, args.split,
                                                                   args.problems, args.seed)
    rows = []
    for setting, (cost, a, b) in settings.items():
        exact = emd.solve(cost.double(), a.double(), b.double(), solver="exact").value
        for name, path in models.items():
            with torch.no_grad():
                value = emd.solve(cost, a, b, solver="learned", checkpoint=path).value.double()
            row = {"setting": setting, "model": name, "problems": len(cost), "nodes": cost.shape[-1],
                   "pearson": float(stats.pearsonr(value, exact)[0]),
                   "spearman": float(stats.spearmanr(value, exact)[0]),
                   "kendall": float(stats.kendalltau(value, exact)[0]),
                   "mean_relative_error": float(((value - exact) / exact).abs().mean())}
            rows.append(row)
            print(f"| {setting} | {name} | {row['pearson']:.4f} | {row['spearman']:.4f} | {row['kendall']:.3f} | "
                  f"{100 * row['mean_relative_error']:.1f}% |", flush=True)
    write_results(args.json, rows, models=models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
