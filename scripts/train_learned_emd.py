"""Train the ``learned`` EMD solver (a MatchingTransformer) on exact plans and save it.

Problems: generated point clouds (Euclidean cost, 2-D/3-D) and DeepEMD-like cosine costs,
plus, with ``--checkpoint`` and ``--data-root``, the patch features of a trained DeepEMD
backbone on real images (query/support pairs of the train split, with their
cross-reference weights). Targets are the plans of the ``exact`` solver.

    python scripts/train_learned_emd.py --out runs/learned_emd.pt --steps 1500 --nodes 25
    python scripts/train_learned_emd.py --out runs/learned_emd.pt --checkpoint RUN/meta/best.pt \\
        --data-root PATH/miniimagenet --feature-images 2000
Use it with ``model.options.solver=learned model.options.solver_options.checkpoint=runs/learned_emd.pt``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch


from fewshot.emd import MatchingTransformer  # noqa: E402
from fewshot.emd._learned import random_problems, save_model, train_matcher  # noqa: E402


def deepemd_problems(checkpoint: str, data_root: str, n_images: int, seed: int):
    """A problem generator drawing pairs of images' DeepEMD-FCN node sets (cost, a, b)."""
    from fewshot.engine import load_trained
    from fewshot.engine.evaluate import encode_images
    from fewshot.engine.trainer import load_split
    from fewshot.models.deepemd import cross_reference_weights, node_cost

    config, model = load_trained(checkpoint, [f"data.root={data_root}"], device="cpu")
    model.eval()
    dataset = load_split(config, config.data.train_split, train=False)
    g = torch.Generator().manual_seed(seed)
    picked = torch.randperm(len(dataset), generator=g)[:n_images].tolist()
    feats = encode_images(model, dataset, picked, torch.device("cpu"), progress=True)   # [n, C, M]
    print(f"encoded {len(picked)} train images -> node sets {tuple(feats.shape[1:])}", flush=True)

    def problems(batch, generator):
        i = torch.randint(0, len(feats), (batch,), generator=generator)
        j = torch.randint(0, len(feats), (batch,), generator=generator)
        x, y = feats[i], feats[j]
        M = x.shape[2]
        a = torch.stack([cross_reference_weights(x[k:k + 1], y[k:k + 1])[0, 0] for k in range(batch)])
        b = torch.stack([cross_reference_weights(y[k:k + 1], x[k:k + 1])[0, 0] for k in range(batch)])
        a, b = a * M / a.sum(1, keepdim=True), b * M / b.sum(1, keepdim=True)
        cost = torch.stack([node_cost(x[k:k + 1], y[k:k + 1], model.metric, model.center)[0, 0]
                            for k in range(batch)])
        return cost.float(), a.float(), (b * a.sum(1, keepdim=True) / b.sum(1, keepdim=True)).float()

    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--nodes", type=int, default=25)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", help="trained DeepEMD checkpoint: also train on its patch features")
    parser.add_argument("--data-root")
    parser.add_argument("--feature-images", type=int, default=2000)
    parser.add_argument("--float16", action="store_true", help="store the weights in float16 (half the size)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    model = MatchingTransformer(dim=args.dim, layers=args.layers)
    problems = None
    if args.checkpoint:
        if not args.data_root:
            parser.error("--checkpoint needs --data-root")
        features = deepemd_problems(args.checkpoint, args.data_root, args.feature_images, args.seed)

        def problems(batch, generator):                   # half generated, half DeepEMD node sets
            c1, a1, b1 = random_problems(batch // 2, args.nodes, generator)
            c2, a2, b2 = features(batch - batch // 2, generator)
            if c2.shape[1:] != c1.shape[1:]:
                return c2, a2, b2                          # node counts differ: alternate batches
            return torch.cat([c1, c2]), torch.cat([a1, a2]), torch.cat([b1, b2])
    t = time.perf_counter()
    history = train_matcher(model, args.steps, args.batch, args.nodes, args.seed, args.lr,
                            problems=problems, log_every=100)
    info = {"steps": args.steps, "batch": args.batch, "nodes": args.nodes, "seed": args.seed,
            "deepemd_checkpoint": args.checkpoint, "final_loss": history[-1],
            "seconds": time.perf_counter() - t}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_model(model, args.out, info, float16=args.float16)
    print(f"saved {args.out} ({sum(p.numel() for p in model.parameters())} parameters, "
          f"{info['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
