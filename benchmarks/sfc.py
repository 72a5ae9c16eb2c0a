"""Structured FC (5-shot prototypes) fitting time per episode: the plain fit against the new one.

SFC runs ``sfc_steps`` epochs of SGD over the support set in batches of ``sfc_batch``
(100 x 7 = 700 steps for 5-way 5-shot), each step solving batch x n_way EMD problems.
Rows, each on the same support sets and in one run:

* ``before``: the plain fit, as this project did it before: one episode at a time,
  gradient by autograd through the EMD layer, every exact solve from a cold start;
* ``after, 1 episode``: closed-form gradient (``sfc_gradient: closed_form``) and each
  support image's exact solves warm-started from its previous optimal bases;
* ``after, E in lockstep``: the same with ``--lockstep`` episodes fitted together (one
  solver call per step for all of them), as ``evaluate`` does (``episodes_per_fit``);
* the same three for ``sinkhorn`` (autograd; warm start = the previous potentials), with
  ``--sinkhorn-steps`` SFC epochs (default 10 of the 100: Sinkhorn needs hundreds of
  iterations per solve on real features, minutes per full fit).

Reported: seconds per episode, the speed-up over ``before``, simplex pivots per problem
(exact) or Sinkhorn iterations per call, and the largest prototype difference to ``before`` (the fits are the same;
float32 features, so differences are rounding).

Feature sets: ``conv4`` (real Conv-4 support features, 64 x 25 nodes, of the first episodes
of a 5-shot manifest under a checkpoint: ``--checkpoint``, ``--episodes-file``,
``--data-root``; random ones without a checkpoint) and ``resnet12`` (random features of
ResNet-12's size, 640 x 25 nodes).

    python benchmarks/sfc.py --checkpoint R/meta/best.pt --episodes-file R/val_5way5shot_100.json \\
        --data-root PATH/miniimagenet
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from _common import write_results  # noqa: E402
from fewshot.models import create_model  # noqa: E402


def support_sets(checkpoint: str, episodes_file: str, data_root: str, n: int, channels: int):
    """Support features [n, 25, C, 25] and labels [n, 25] (5-way 5-shot)."""
    labels = torch.arange(5).repeat_interleave(5).expand(n, -1)
    if not checkpoint:
        g = torch.Generator().manual_seed(0)
        return torch.randn(n, 25, channels, 25, generator=g), labels
    from fewshot.engine import episode_sampler, load_trained
    from fewshot.engine.evaluate import encode_images
    config, model = load_trained(checkpoint, [f"data.root={data_root}"], device="cpu")
    model.eval()
    sampler = episode_sampler(config, "val", 5, 5, 15, 1, episodes_file)
    feats = [encode_images(model, sampler.dataset, sampler.indices(i).support, torch.device("cpu"))
             for i in range(n)]
    return torch.stack(feats), labels


def timed_fit(sfc, head, feats, labels, lockstep: int):
    """(seconds per episode, prototypes [E, ...], stats) fitting ``lockstep`` episodes at a time."""
    stats, protos = {}, []
    t = time.perf_counter()
    for first in range(0, len(feats), lockstep):
        protos.append(sfc.fit_many(head, feats[first:first + lockstep], labels[first:first + lockstep], stats))
    return (time.perf_counter() - t) / len(feats), torch.cat(protos), stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--episodes-file", default="")
    parser.add_argument("--data-root", default="")
    parser.add_argument("--before-episodes", type=int, default=4, help="episodes timed for `before`")
    parser.add_argument("--lockstep", type=int, default=50, help="episodes fitted together")
    parser.add_argument("--sinkhorn-lockstep", type=int, default=10)
    parser.add_argument("--sinkhorn-steps", type=int, default=10,
                        help="SFC epochs of the sinkhorn rows (100 take minutes per episode)")
    parser.add_argument("--features", nargs="+", choices=("conv4", "resnet12"), default=["conv4", "resnet12"])
    parser.add_argument("--solvers", nargs="+", choices=("exact", "sinkhorn"), default=["exact", "sinkhorn"])
    parser.add_argument("--out", default="benchmarks/sfc.json")
    args = parser.parse_args()
    rows = []
    for features, channels in (("conv4", 64), ("resnet12", 640)):
        if features not in args.features:
            continue
        ckpt = args.checkpoint if features == "conv4" else ""
        for solver, lockstep in (("exact", args.lockstep), ("sinkhorn", args.sinkhorn_lockstep)):
            if solver not in args.solvers:
                continue
            feats, labels = support_sets(ckpt, args.episodes_file, args.data_root, lockstep, channels)
            steps = 100 if solver == "exact" else args.sinkhorn_steps
            model = create_model("deepemd", "conv4", {}, {"solver": solver, "sfc_steps": steps}).eval()
            new = model.sfc
            old = dataclasses.replace(new, gradient="autograd", warm_start=False)
            if solver == "sinkhorn":   # warm-started Sinkhorn was already the default before
                old = dataclasses.replace(old, warm_start=True)
            timed_fit(new, model.head, feats[:1], labels[:1], 1)        # compile and warm up
            n_before = min(args.before_episodes, lockstep)
            base, reference, base_stats = timed_fit(old, model.head, feats[:n_before], labels[:n_before], 1)
            for entry, sfc, n, step in (("before", old, n_before, 1), ("after, 1 episode", new, n_before, 1),
                                        (f"after, {lockstep} in lockstep", new, lockstep, lockstep)):
                if entry == "before":
                    seconds, protos, stats = base, reference, base_stats
                else:
                    seconds, protos, stats = timed_fit(sfc, model.head, feats[:n], labels[:n], step)
                work = (stats.get("pivots", 0) / stats["problems"] if solver == "exact"
                        else stats.get("iterations", 0) / stats["solves"])
                diff = float((protos[:n_before] - reference).abs().max())
                row = {"features": features, "nodes": f"{channels} x 25", "solver": solver, "entry": entry,
                       "sfc_steps": steps,
                       "episodes": n, "seconds_per_episode": seconds, "speedup": base / seconds,
                       "pivots_per_problem" if solver == "exact" else "iterations_per_call": work,
                       "max_prototype_difference": diff}
                rows.append(row)
                print(f"{features:8s} {solver:8s} {entry:22s} {seconds:7.3f} s/episode  x{base / seconds:5.1f}  "
                      f"{work:8.1f} {'pivots per problem' if solver == 'exact' else 'iterations per call'}  "
                      f"max |proto - before| {diff:.1e}", flush=True)
    write_results(args.out, rows, torch.device("cpu"),
                  features="checkpoint" if args.checkpoint else "random")


if __name__ == "__main__":
    main()
