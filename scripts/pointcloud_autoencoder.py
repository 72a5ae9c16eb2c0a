"""A point-cloud autoencoder trained with each reconstruction loss, evaluated by exact EMD and
Chamfer distance on validation shapes (the learned EMD used as a loss, arXiv 2311.09998).

Data: ModelNet40 (any layout of ``fewshot.data.pointclouds``) at ``--points`` points per cloud,
the last ``--val-fraction`` of each class's shapes held out. Model: a PointNet encoder (shared
MLP 3 -> 64 -> 128 -> ``--latent``, max-pooled) and an MLP decoder (latent -> 256 -> 512 ->
points x 3). Losses between a cloud x [B, N, 3] and its reconstruction y [B, N, 3]:

  chamfer    mean over x of the squared distance to the nearest point of y, plus the reverse
  learned    the learned EMD (``fewshot.emd.learned_emd``: the shipped model unless ``--learned``,
             its point-cloud defaults unless ``--learned-option KEY=VALUE`` sets a solver option)
  exact      the exact EMD (``solver="exact"``; gradient = the optimal plan, envelope theorem)
  sinkhorn   entropic OT, log domain (``--epsilon``, ``--sinkhorn-iter`` iterations)

EMD values are the mean matched distance (uniform weights 1/N). Every loss trains the same
model from the same seed for ``--epochs`` epochs (Adam ``--lr``, batch ``--batch``); each is
then evaluated on the validation shapes by the exact EMD and the Chamfer distance, mean +-
95% CI over shapes, with its training wall time.

    python scripts/pointcloud_autoencoder.py --data-root PATH/modelnet40 --out OUT
writes OUT/autoencoder.json and OUT/autoencoder.png (input vs reconstruction per loss).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import yaml

from fewshot import emd
from fewshot.errors import ConfigError
from fewshot.data.pointclouds import load_modelnet40, validation_split

LOSSES = ("chamfer", "learned", "exact", "sinkhorn")


class AutoEncoder(nn.Module):
    def __init__(self, n_points: int, latent: int = 128):
        super().__init__()
        self.n_points = n_points
        self.encoder = nn.Sequential(nn.Conv1d(3, 64, 1), nn.BatchNorm1d(64), nn.ReLU(),
                                     nn.Conv1d(64, 128, 1), nn.BatchNorm1d(128), nn.ReLU(),
                                     nn.Conv1d(128, latent, 1))
        self.decoder = nn.Sequential(nn.Linear(latent, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(),
                                     nn.Linear(512, 3 * n_points))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, 3] -> reconstruction [B, n_points, 3]."""
        z = self.encoder(x.transpose(1, 2)).amax(2)
        return self.decoder(z).view(-1, self.n_points, 3)


def chamfer(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Chamfer distance [B] between x [B, N, 3] and y [B, M, 3] (squared distances, both ways)."""
    d = torch.cdist(x, y).square()
    return d.amin(2).mean(1) + d.amin(1).mean(1)


def emd_value(x: torch.Tensor, y: torch.Tensor, solver) -> torch.Tensor:
    """EMD [B] (mean matched distance) between equal-size uniform clouds x, y [B, N, 3]."""
    B, N = x.shape[:2]
    w = torch.full((B, N), 1.0 / N, dtype=x.dtype, device=x.device)
    return emd.solve(torch.cdist(x, y), w, w, solver=solver).value


def make_loss(name: str, epsilon: float, sinkhorn_iter: int, learned: str, learned_options: dict):
    if name == "chamfer":
        return chamfer
    if name == "learned":
        options = emd.learned_pointcloud_options({"checkpoint": learned, **learned_options})
        solver = emd.make_solver("learned", options, where="--learned-option")
        return lambda x, y: emd_value(x, y, solver)
    solver = emd.make_solver("exact") if name == "exact" else emd.make_solver(
        "sinkhorn", {"epsilon": epsilon, "max_iter": sinkhorn_iter, "on_unconverged": "ignore"})
    return lambda x, y: emd_value(x, y, solver)


def mean_ci(values: torch.Tensor):
    v = values.double()
    return float(v.mean()), float(1.96 * v.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0


def train(name: str, train_points: torch.Tensor, args) -> tuple:
    torch.manual_seed(args.seed)
    model = AutoEncoder(args.points, args.latent)
    loss_fn = make_loss(name, args.epsilon, args.sinkhorn_iter, args.learned, args.learned_options)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    history, t = [], time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_points), generator=g)
        total = 0.0
        for k in range(0, len(order) - args.batch + 1, args.batch):
            x = train_points[order[k:k + args.batch]]
            loss = loss_fn(x, model(x)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        history.append(total / max(1, len(order) // args.batch))
        print(f"[{name}] epoch {epoch + 1}/{args.epochs}: loss {history[-1]:.5f}", flush=True)
    return model, history, time.perf_counter() - t


@torch.no_grad()
def evaluate(model: AutoEncoder, points: torch.Tensor) -> dict:
    model.eval()
    y = model(points)
    exact = emd_value(points.double(), y.double(), "exact")
    return {"exact_emd": mean_ci(exact), "chamfer": mean_ci(chamfer(points.double(), y.double())),
            "reconstructions": y, "per_shape": exact}


def draw(points: torch.Tensor, reconstructions: dict, path: str, shapes: int = 4) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = 1 + len(reconstructions)
    fig = plt.figure(figsize=(2.2 * cols, 2.2 * shapes))
    for i in range(min(shapes, len(points))):
        for j, (title, cloud) in enumerate([("input", points[i])] + [(k, v[i]) for k, v in reconstructions.items()]):
            ax = fig.add_subplot(shapes, cols, i * cols + j + 1, projection="3d")
            c = cloud.cpu().numpy()
            ax.scatter(c[:, 0], c[:, 2], c[:, 1], s=1.5, c=c[:, 1], cmap="viridis")
            ax.set_axis_off()
            ax.view_init(elev=20, azim=-60)
            if i == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="ModelNet40 root (npy, HDF5 or text layout)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--points", type=int, default=256)
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--latent", type=int, default=128)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--classes", nargs="+", help="only these classes (default: all)")
    parser.add_argument("--epsilon", type=float, default=0.01, help="Sinkhorn epsilon (distances in unit-sphere units)")
    parser.add_argument("--sinkhorn-iter", type=int, default=50)
    parser.add_argument("--learned", default="", help="learned-EMD checkpoint or shipped name (default: the shipped pointclouds model)")
    parser.add_argument("--learned-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a learned-EMD solver option over learned_emd's defaults, e.g. gradient=autograd")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for flag in ("points", "epochs", "batch", "latent", "sinkhorn_iter"):
        if getattr(args, flag) < 1:
            parser.error(f"argument --{flag.replace('_', '-')}: expected >= 1, got {getattr(args, flag)}")
    args.learned_options = {}
    for item in args.learned_option:
        key, eq, value = item.partition("=")
        if not eq:
            parser.error(f"argument --learned-option: expected KEY=VALUE, got {item!r}")
        args.learned_options[key] = yaml.safe_load(value)
    if "learned" in args.losses:
        try:
            make_loss("learned", args.epsilon, args.sinkhorn_iter, args.learned, args.learned_options)
        except ConfigError as e:
            parser.error(str(e))
    clouds = load_modelnet40(args.data_root, classes=args.classes, n_points=args.points, seed=args.seed)
    train_set, val_set = validation_split(clouds, args.val_fraction)
    if len(train_set) < args.batch:
        parser.error(f"argument --batch: {args.batch} exceeds the {len(train_set)} training shapes")
    os.makedirs(args.out, exist_ok=True)
    print(f"{len(train_set)} training and {len(val_set)} validation shapes of {len(clouds.classes)} classes, "
          f"{args.points} points", flush=True)
    rows, pictures, per_shape = [], {}, {}
    for name in args.losses:
        model, history, seconds = train(name, train_set.points, args)
        result = evaluate(model, val_set.points)
        pictures[name] = result.pop("reconstructions")
        per_shape[name] = result.pop("per_shape")
        rows.append({"loss": name, "train_seconds": seconds, "final_train_loss": history[-1],
                     "val_exact_emd": result["exact_emd"], "val_chamfer": result["chamfer"]})
        print(f"[{name}] val exact EMD {result['exact_emd'][0]:.4f} +- {result['exact_emd'][1]:.4f}, "
              f"Chamfer {result['chamfer'][0]:.5f} +- {result['chamfer'][1]:.5f}, trained in {seconds:.0f} s",
              flush=True)
    for row in rows:                 # paired over the same shapes: (EMD_loss - EMD_other) / EMD_other
        row["paired_relative_difference"] = {
            other: mean_ci(per_shape[row["loss"]] / per_shape[other] - 1) for other in per_shape if other != row["loss"]}
    with open(os.path.join(args.out, "autoencoder.json"), "w") as f:
        json.dump({"args": vars(args), "train_shapes": len(train_set), "val_shapes": len(val_set),
                   "rows": rows}, f, indent=1)
    draw(val_set.points, pictures, os.path.join(args.out, "autoencoder.png"))
    print(f"written {args.out}/autoencoder.json and autoencoder.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
