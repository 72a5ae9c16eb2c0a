"""Structured FC (5-shot prototypes) fitting time per episode, by EMD layer.

SFC runs ``sfc_steps`` epochs of SGD over the support set in batches of ``sfc_batch``
(100 x 7 = 700 steps for 5-way 5-shot), each step solving batch x n_way EMD problems and
back-propagating through them. Rows: ``exact``; ``sinkhorn`` warm-started (each support
image's problems start from the potentials of its previous step, the default); ``sinkhorn``
cold-started (``sfc_warm_start: false``). Features are either random (channel count and
node count as Conv-4 on 84 x 84: 64 x 25) or the support features of the first episodes of
a manifest under a checkpoint (``--checkpoint``, ``--episodes-file``, ``--data-root``).
Reported per row: seconds per SFC fit, Sinkhorn iterations per solve, and the largest
prototype difference to the warm-started fit.

    python benchmarks/sfc.py --episodes 2 [--checkpoint ... --episodes-file ... --data-root ...]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


from _common import write_results  # noqa: E402
from fewshot.models import create_model  # noqa: E402

ROWS = (("exact", "exact", True), ("sinkhorn_warm", "sinkhorn", True), ("sinkhorn_cold", "sinkhorn", False))


def support_sets(args):
    """[(features [n_way * n_shot, C, nodes], labels [n_way * n_shot])] per episode."""
    if not args.checkpoint:
        g = torch.Generator().manual_seed(0)
        labels = torch.arange(5).repeat_interleave(5)
        return [(torch.randn(25, 64, 25, generator=g), labels) for _ in range(args.episodes)]
    from fewshot.engine import episode_sampler, load_trained
    from fewshot.engine.evaluate import encode_images
    config, model = load_trained(args.checkpoint, [f"data.root={args.data_root}"], device="cpu")
    model.eval()
    sampler = episode_sampler(config, "val", 5, 5, 15, 1, args.episodes_file)
    out = []
    for i in range(args.episodes):
        ep = sampler.indices(i)
        out.append((encode_images(model, sampler.dataset, ep.support, torch.device("cpu")),
                    ep.labels(len(ep.support) // ep.n_way)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--episodes-file", default="")
    parser.add_argument("--data-root", default="")
    parser.add_argument("--out", default="benchmarks/sfc.json")
    args = parser.parse_args()
    sets = support_sets(args)
    rows, reference = [], []
    for name, solver, warm in ROWS:
        model = create_model("deepemd", "conv4", {}, {"solver": solver, "sfc_warm_start": warm}).eval()
        seconds, protos, stats = 0.0, [], {}
        for feats, labels in sets:
            t = time.perf_counter()
            protos.append(model.structured_fc(feats, labels, stats))  # stats: solves, iterations
            seconds += time.perf_counter() - t
        if name == "sinkhorn_warm":
            reference = protos
        diff = (max(float((p - r).abs().max()) for p, r in zip(protos, reference))
                if reference and solver == "sinkhorn" else float("nan"))
        row = {"entry": name, "seconds_per_fit": seconds / len(sets),
               "iterations_per_solve": stats["iterations"] / stats["solves"] if stats.get("iterations") else None,
               "max_prototype_difference_to_warm": diff}
        rows.append(row)
        its = f"{row['iterations_per_solve']:.0f}" if row["iterations_per_solve"] else "-"
        print(f"{name:14s} {row['seconds_per_fit']:8.2f} s per fit  {its:>6s} iterations per solve  "
              f"max |prototype - warm| {diff:.1e}")
    by = {r["entry"]: r["seconds_per_fit"] for r in rows}
    print(f"warm start: {by['sinkhorn_cold'] / by['sinkhorn_warm']:.1f}x faster SFC through Sinkhorn; "
          f"exact is {by['sinkhorn_warm'] / by['exact']:.1f}x faster still")
    write_results(args.out, rows, torch.device("cpu"), episodes=len(sets),
                  features="checkpoint" if args.checkpoint else "random")


if __name__ == "__main__":
    main()
