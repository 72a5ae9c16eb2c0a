"""Compare EMD solvers inside one trained DeepEMD model on identical episodes.

Encodes the distinct images of the episodes once, then scores every episode with each
solver and reports accuracy +- 95% CI, the fraction of queries whose predicted class
equals the ``exact`` prediction, and the mean Kendall tau between each solver's class
ranking and the ``exact`` ranking.

    python benchmarks/solver_agreement.py --checkpoint RUN/meta/best.pt --episodes-file VAL.json \
        --data-root PATH --solvers exact sinkhorn tree chain qpth cvxpylayers --episodes 200 \
        --limit qpth=10 cvxpylayers=20

``--limit SOLVER=N`` scores only the first N episodes with a slow solver (its accuracy
and agreement are then over those episodes).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

# As in eval.py: torch's OpenMP threads must not spin on the cores the EMD layer's threads use.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


from fewshot.engine import episode_sampler, load_trained  # noqa: E402
from fewshot.engine.evaluate import encode_images  # noqa: E402
from fewshot.engine.metrics import mean_confidence_interval  # noqa: E402
from fewshot.models.deepemd import emd_logits  # noqa: E402


def kendall_tau(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Kendall tau between the rows of x and y [Q, W] (no ties expected)."""
    dx = torch.sign(x[:, :, None] - x[:, None, :])
    dy = torch.sign(y[:, :, None] - y[:, None, :])
    W = x.shape[1]
    return (dx * dy).sum((1, 2)) / (W * (W - 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--episodes-file", required=True)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--solvers", nargs="+", default=["exact", "sinkhorn", "tree"])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--limit", nargs="*", default=[], metavar="SOLVER=N",
                        help="score only the first N episodes with SOLVER")
    parser.add_argument("--learned-checkpoint", default="", help="checkpoint of the learned solver")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    options = {"learned": {"checkpoint": args.learned_checkpoint}} if args.learned_checkpoint else {}
    try:
        limits = {k: int(v) for k, v in (item.split("=") for item in args.limit)}
    except ValueError:
        parser.error(f"--limit expects SOLVER=N items, got {args.limit}")
    config, model = load_trained(args.checkpoint, [f"data.root={args.data_root}"], device="cpu")
    model.eval()
    sampler = episode_sampler(config, args.split, 0, 0, 0, 0, args.episodes_file)
    episodes = [sampler.indices(i) for i in range(min(args.episodes, len(sampler)))]
    distinct = sorted({j for ep in episodes for j in ep.support + ep.query})
    pos = {j: p for p, j in enumerate(distinct)}
    feats = encode_images(model, sampler.dataset, distinct, torch.device("cpu"))
    results = {}
    ref_logits = []
    for solver in args.solvers:
        accs, agree, taus, logits_all = [], [], [], []
        tic = time.perf_counter()
        for k, ep in enumerate(episodes[:limits.get(solver, len(episodes))]):
            s = feats[[pos[j] for j in ep.support]]
            q = feats[[pos[j] for j in ep.query]]
            with torch.no_grad():
                logits = emd_logits(q, s, solver, options.get(solver, {}), model.temperature, model.metric, model.center)
            labels = ep.labels(len(ep.query) // ep.n_way)
            accs.append((logits.argmax(1) == labels).float().mean().item() * 100)
            logits_all.append(logits)
            if solver == args.solvers[0]:
                ref_logits.append(logits)
            agree.append((logits.argmax(1) == ref_logits[k].argmax(1)).float().mean().item())
            taus.append(kendall_tau(logits, ref_logits[k]).mean().item())
        mean, ci = mean_confidence_interval(accs)
        results[solver] = {"accuracy": mean, "ci95": ci, "top1_agreement": sum(agree) / len(agree),
                           "kendall_tau": sum(taus) / len(taus),
                           "seconds": time.perf_counter() - tic, "episodes": len(accs)}
        r = results[solver]
        print(f"{solver:>12}: {mean:6.2f} +- {ci:4.2f} %  top-1 agreement with {args.solvers[0]} "
              f"{r['top1_agreement']:.3f}  Kendall tau {r['kendall_tau']:.3f}  "
              f"({r['episodes']} episodes, {r['seconds']:.0f} s)",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
