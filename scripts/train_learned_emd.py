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
    from fewshot.models.deepemd import emd_problem

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
        # one query against one prototype per problem: [batch, 1, C, M] -> [batch, 1, 1, ...]
        cost, a, b = emd_problem(feats[i][:, None], feats[j][:, None], model.head.metric, model.head.center)
        return cost[:, 0, 0].float(), a[:, 0, 0].float(), b[:, 0, 0].float()

    return problems


def robust_problems(n: int, widths=(64, 640)):
    """A problem generator for the cosine model that must hold across DeepEMD's settings: per
    batch, a quarter each of generated point clouds and 1 - cos problems (random or uniform
    weights, a width of ``widths``), and of DeepEMD problems built by ``emd_problem`` (cost and
    cross-reference weights) from random non-negative node features [C, n] of each width, the
    two sets sharing an image-level component half of the time (same class)."""
    from fewshot.models.deepemd import random_emd_problems

    def problems(batch, generator):
        q = batch // 4
        pick = lambda: int(torch.randint(0, 2, (1,), generator=generator))    # noqa: E731
        parts = [random_problems(q, n, generator, kind="points"),
                 random_problems(q, n, generator, kind="cosine", width=widths[pick()],
                                 weights=("random", "uniform")[pick()]),
                 random_emd_problems(q, n, widths[0], generator),
                 random_emd_problems(batch - 3 * q, n, widths[-1], generator)]
        return tuple(torch.cat([p[k].float() for p in parts]) for k in range(3))

    return problems


def pointcloud_problems(root: str, n_points: int, hold_out: int, seed: int):
    """A problem generator drawing pairs of real point clouds (ModelNet40, any layout of
    fewshot.data.pointclouds): the training shapes of all but the last ``hold_out`` classes
    (validation shapes and held-out classes are never drawn), ``n_points`` random points of
    each, a random rotation about the vertical axis and Gaussian jitter (sigma 0.01, clipped at
    0.05) per cloud, half the pairs of the same class; Euclidean cost, uniform weights."""
    from fewshot.data.pointclouds import load_modelnet40, sample_points, validation_split

    clouds = load_modelnet40(root, seed=seed)
    train, _ = validation_split(clouds)
    train = train.of_classes(clouds.classes[:len(clouds.classes) - hold_out])
    by_class = {int(c): torch.nonzero(train.labels == c)[:, 0] for c in train.labels.unique()}
    print(f"point clouds: {len(train)} training shapes of {len(by_class)} classes "
          f"({hold_out} classes held out), {n_points} points per cloud", flush=True)

    def augment(x, generator):
        theta = 2 * torch.pi * torch.rand(len(x), generator=generator)
        c, s = theta.cos(), theta.sin()
        rot = torch.zeros(len(x), 3, 3)
        rot[:, 0, 0], rot[:, 0, 2], rot[:, 2, 0], rot[:, 2, 2], rot[:, 1, 1] = c, s, -s, c, 1
        jitter = (0.01 * torch.randn(x.shape, generator=generator)).clamp(-0.05, 0.05)
        return x @ rot.transpose(1, 2) + jitter

    def problems(batch, generator):
        first = torch.randint(0, len(train), (batch,), generator=generator)
        second = torch.randint(0, len(train), (batch,), generator=generator)
        same = torch.rand(batch, generator=generator) < 0.5
        for k in torch.nonzero(same)[:, 0].tolist():   # a different shape of the same class
            pool = by_class[int(train.labels[first[k]])]
            second[k] = pool[torch.randint(0, len(pool), (1,), generator=generator)]
        x = augment(sample_points(train.points[first], n_points, generator), generator)
        y = augment(sample_points(train.points[second], n_points, generator), generator)
        ones = torch.ones(batch, n_points)
        return torch.cdist(x, y), ones, ones.clone()

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
    parser.add_argument("--modelnet", help="ModelNet40 root: train on pairs of its real point clouds "
                        "(--nodes points each) instead of generated problems")
    parser.add_argument("--hold-out-classes", type=int, default=10,
                        help="with --modelnet: the last K classes are never trained on (default 10)")
    parser.add_argument("--problems", choices=("generated", "robust"), default="generated",
                        help="generated: point clouds and 64-d cosine problems with random weights; robust: "
                             "also uniform weights, widths 64 and 640 and DeepEMD's cross-reference weights")
    parser.add_argument("--normalize", choices=("max", "range"), default="max",
                        help="what the network reads: cost / max, or (cost - min) / (max - min)")
    parser.add_argument("--float16", action="store_true", help="store the weights in float16 (half the size)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    model = MatchingTransformer(dim=args.dim, layers=args.layers, normalize=args.normalize)
    problems = robust_problems(args.nodes) if args.problems == "robust" else None
    if args.modelnet:
        if args.checkpoint:
            parser.error("--modelnet and --checkpoint: train on one kind of problem")
        problems = pointcloud_problems(args.modelnet, args.nodes, args.hold_out_classes, args.seed)
    if args.checkpoint:
        if not args.data_root:
            parser.error("--checkpoint needs --data-root")
        features = deepemd_problems(args.checkpoint, args.data_root, args.feature_images, args.seed)

        generated = problems or (lambda batch, generator: random_problems(batch, args.nodes, generator))

        def problems(batch, generator):                   # half generated, half DeepEMD node sets
            c1, a1, b1 = generated(batch // 2, generator)
            c2, a2, b2 = features(batch - batch // 2, generator)
            if c2.shape[1:] != c1.shape[1:]:
                return c2, a2, b2                          # node counts differ: alternate batches
            return torch.cat([c1, c2]), torch.cat([a1, a2]), torch.cat([b1, b2])
    t = time.perf_counter()
    history = train_matcher(model, args.steps, args.batch, args.nodes, args.seed, args.lr,
                            problems=problems, log_every=100)
    info = {"steps": args.steps, "batch": args.batch, "nodes": args.nodes, "seed": args.seed,
            "problems": "modelnet" if args.modelnet else args.problems,
            "deepemd_checkpoint": args.checkpoint, "modelnet": args.modelnet,
            "hold_out_classes": args.hold_out_classes if args.modelnet else 0, "final_loss": history[-1],
            "seconds": time.perf_counter() - t}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_model(model, args.out, info, float16=args.float16)
    print(f"saved {args.out} ({sum(p.numel() for p in model.parameters())} parameters, "
          f"{info['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
