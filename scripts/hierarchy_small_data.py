"""Small-data classification with hierarchy-aware losses (Martinez et al. 2016, Fig. 7 analogue).

A Conv-4 with a linear head is trained from scratch on the classes of the given splits of a
miniImageNet-layout dataset (train + val: 80 classes) with ``--per-class`` training images per
class (each setting, e.g. 50 and 300), and tested on held-out images of the same classes (the
same ``--test-per-class`` images for every setting), with each loss:

  ce        cross-entropy
  emd2      relaxed EMD^2 between softmax and one-hot label on the WordNet tree (closed form)
  ce+emd2   CE + EMD^2
  ce+sd     CE + Sinkhorn distance (``fewshot.emd.solve(..., solver="sinkhorn")``, log domain,
            ``--sd-iterations`` unrolled iterations at ``--sd-epsilon``) under the tree metric
  emd2-edges  EMD^2 alone with the edge lengths in WordNet edges (not rescaled; a loss
            ``unit`` times larger, as a larger learning rate would be)

The tree's edge lengths are divided by the mean distance between two classes (the ``unit``),
so that an average confusion costs 1 in every tree loss (the scale of CE near convergence),
except in ``emd2-edges``; the reported
holistic errors use WordNet edges. Measured on the test images after each ``--eval-every``
epochs: top-1 error, holistic error (expected tree distance of the prediction to the label,
sum_c p_c d(c, y), i.e. EMD(p, one-hot y) under the tree metric) and the tree distance of the
top-1 prediction. Every (setting, loss, seed) uses the same schedule; seeds change the weights,
the training subset order and the augmentation, not the images.

    python scripts/hierarchy_small_data.py --data-root PATH/miniimagenet --out OUT
    (or make hierarchy-small-data MINI=PATH)

Writes OUT/runs.json (every run and its curve), OUT/table.md (mean +- 95% CI over seeds) and
OUT/curves.png; a finished run is not repeated when OUT/runs.json already holds it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fewshot import emd
from fewshot.data.datasets import build_dataset
from fewshot.emd.hierarchy import ClassTree, tree_emd
from fewshot.errors import FewShotError
from fewshot.models.backbones import create_backbone

LOSSES = ("ce", "emd2", "ce+emd2", "ce+sd", "emd2-edges")
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def load_images(root, splits, image_size, pool, test_per_class, seed=0):
    """uint8 images [n, 3, S, S] and labels of the training pool and the test set, with the
    class names. Per class, images are shuffled with ``seed``; the first ``pool`` are the
    training pool (each setting takes a prefix), the next ``test_per_class`` the test set."""
    from PIL import Image
    classes, train, test = [], ([], []), ([], [])
    rng = np.random.default_rng(seed)
    for split in splits:
        data = build_dataset("miniimagenet", root, split)
        by_class = data.indices_by_class()
        for c, name in enumerate(data.classes):
            idx = rng.permutation(by_class[c])
            if len(idx) < pool + test_per_class:
                raise FewShotError(f"{root}: class {name} has {len(idx)} images, fewer than "
                                   f"--per-class {pool} + --test-per-class {test_per_class}")
            label = len(classes)
            classes.append(name)
            for part, chosen in ((train, idx[:pool]), (test, idx[pool:pool + test_per_class])):
                for i in chosen:
                    img = data.image(int(i)).convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                    part[0].append(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
                    part[1].append(label)
    pack = lambda p: (torch.from_numpy(np.stack(p[0])), torch.tensor(p[1]))  # noqa: E731
    return classes, pack(train), pack(test)


def augment(x, gen):
    """Random 4-px-padded crop and horizontal flip of a float batch [B, 3, S, S]."""
    B, _, S, _ = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dx, dy = torch.randint(0, 9, (2,), generator=gen).tolist()
    x = padded[:, :, dy:dy + S, dx:dx + S]
    flip = torch.rand(B, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


class Losses:
    """The training losses of the experiment on one class tree (lengths in units of the mean
    class-to-class distance)."""

    def __init__(self, tree: ClassTree, n_classes: int, sd_epsilon: float, sd_iterations: int):
        dist = tree.distances()[:n_classes, :n_classes]
        self.scale = float(dist.sum() / (n_classes * (n_classes - 1)))
        self.edges = tree
        self.tree = ClassTree(tree.parents, (tree.lengths / self.scale).tolist())
        self.cost = (dist / self.scale).float()
        self.sinkhorn = emd.make_solver("sinkhorn", {"epsilon": sd_epsilon, "max_iter": sd_iterations,
                                                     "tol": 1e-12, "gradient": "unrolled",
                                                     "on_unconverged": "ignore"})
        self.K, self.C = len(tree), n_classes

    def emd2(self, logits, labels, tree=None):
        p = torch.cat([logits.softmax(-1), logits.new_zeros(len(logits), self.K - self.C)], 1)
        q = torch.zeros_like(p).scatter_(1, labels[:, None], 1.0)
        return tree_emd(p, q, tree or self.tree, rho=2.0).mean()

    def sd(self, logits, labels):
        p = logits.softmax(-1)
        q = torch.zeros_like(p).scatter_(1, labels[:, None], 1.0)
        cost = self.cost.to(p)[None].expand(len(p), -1, -1)
        return self.sinkhorn(cost, p, q).value.mean()

    def __call__(self, name, logits, labels):
        if name == "ce":
            return F.cross_entropy(logits, labels)
        if name == "emd2":
            return self.emd2(logits, labels)
        if name == "ce+emd2":
            return F.cross_entropy(logits, labels) + self.emd2(logits, labels)
        if name == "ce+sd":
            return F.cross_entropy(logits, labels) + self.sd(logits, labels)
        if name == "emd2-edges":
            return self.emd2(logits, labels, self.edges)
        raise FewShotError(f"--losses: unknown loss {name!r}; choose from {', '.join(LOSSES)}")


@torch.no_grad()
def evaluate(model, images, labels, dist, mean, std, batch=500):
    """top-1 error, holistic error (expected tree distance) and top-1 tree distance, in %/edges."""
    model.eval()
    wrong, expected, top1 = 0.0, 0.0, 0.0
    for i in range(0, len(images), batch):
        x = (images[i:i + batch].float() / 255 - mean) / std
        y = labels[i:i + batch]
        prob = model(x).softmax(-1).double()
        pred = prob.argmax(-1)
        wrong += float((pred != y).sum())
        expected += float((prob * dist[:, y].t()).sum())
        top1 += float(dist[pred, y].sum())
    model.train()
    n = len(images)
    return {"top1_error": 100 * wrong / n, "holistic": expected / n, "top1_distance": top1 / n}


def train_one(loss_name, seed, train, test, losses, dist, args):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, labels = train
    model = nn.Sequential(create_backbone("conv4"), nn.Linear(64, losses.C))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps_per_epoch = math.ceil(len(images) / args.batch)
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    curve, start, steps = [], time.time(), 0
    for epoch in range(args.epochs):
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images), args.batch):
            idx = order[i:i + args.batch]
            x = augment((images[idx].float() / 255 - mean) / std, gen)
            loss = losses(loss_name, model(x), labels[idx])
            if not torch.isfinite(loss):
                raise FewShotError(f"{loss_name} seed {seed}: the loss became {float(loss)} at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            steps += 1
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            train_seconds = time.time() - start
            point = evaluate(model, *test, dist, mean, std)
            point.update(epoch=epoch + 1, steps=steps, train_seconds=round(train_seconds, 1))
            curve.append(point)
            start = time.time() - train_seconds       # evaluation time is not training time
            print(f"  epoch {epoch + 1}: top-1 error {point['top1_error']:.2f} %, holistic "
                  f"{point['holistic']:.3f}, {train_seconds:.0f} s", flush=True)
    return {"final": curve[-1], "curve": curve}


def ci(values):
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(T975.get(len(values) - 1, 1.96) * values.std(ddof=1) / math.sqrt(len(values)))


def table(runs, settings, loss_names):
    lines = ["| train images per class | loss | seeds | top-1 error % | holistic error (expected tree distance, edges) "
             "| tree distance of the top-1 prediction | training time per run |",
             "|---|---|---|---|---|---|---|"]
    for per_class in settings:
        for loss in loss_names:
            rs = [r for r in runs if r["per_class"] == per_class and r["loss"] == loss]
            if not rs:
                continue
            cells = []
            for key in ("top1_error", "holistic", "top1_distance"):
                m, h = ci([r["final"][key] for r in rs])
                cells.append(f"{m:.2f} +- {h:.2f}" if key == "top1_error" else f"{m:.3f} +- {h:.3f}")
            secs = np.mean([r["final"]["train_seconds"] for r in rs])
            lines.append(f"| {per_class} | {loss} | {len(rs)} | " + " | ".join(cells) + f" | {secs:.0f} s |")
    return "\n".join(lines) + "\n"


def plot(runs, settings, loss_names, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(settings), figsize=(4.2 * len(settings), 6.4), squeeze=False)
    for col, per_class in enumerate(settings):
        for loss in loss_names:
            rs = [r for r in runs if r["per_class"] == per_class and r["loss"] == loss]
            if not rs:
                continue
            epochs = [p["epoch"] for p in rs[0]["curve"]]
            for row, key in enumerate(("top1_error", "holistic")):
                m = np.mean([[p[key] for p in r["curve"]] for r in rs], 0)
                axes[row][col].plot(epochs, m, marker="o", ms=3, label=loss)
        axes[0][col].set_title(f"{per_class} training images per class")
        axes[0][col].set_ylabel("top-1 error (%)")
        axes[1][col].set_ylabel("holistic error (tree edges)")
        axes[1][col].set_xlabel("epoch")
        axes[0][col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="miniImageNet in the CSV layout")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--tree", default=os.path.join(os.path.dirname(__file__), "..", "configs", "trees",
                                                        "miniimagenet_wordnet.json"))
    parser.add_argument("--per-class", type=int, nargs="+", default=[50, 300])
    parser.add_argument("--epochs", type=int, nargs="+", default=[30, 15],
                        help="epochs of each --per-class setting (one value: all)")
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--losses", nargs="+", default=list(LOSSES[:4]), choices=LOSSES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--eval-every", type=int, default=3)
    parser.add_argument("--sd-epsilon", type=float, default=0.1)
    parser.add_argument("--sd-iterations", type=int, default=20)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if len(args.epochs) not in (1, len(args.per_class)):
        parser.error("--epochs: give one value or one per --per-class setting")
    if min(args.per_class + args.epochs + [args.test_per_class, args.batch, args.eval_every]) < 1:
        parser.error("--per-class, --epochs, --test-per-class, --batch and --eval-every must be >= 1")
    if args.image_size < 16:
        parser.error("--image-size must be >= 16 (Conv-4 halves it four times)")
    epochs = dict(zip(args.per_class, args.epochs * len(args.per_class) if len(args.epochs) == 1 else args.epochs))
    try:
        os.makedirs(args.out, exist_ok=True)
        start = time.time()
        classes, pool, test = load_images(args.data_root, args.splits, args.image_size, max(args.per_class),
                                          args.test_per_class)
        print(f"{len(classes)} classes, {len(pool[0])} pool and {len(test[0])} test images decoded in "
              f"{time.time() - start:.0f} s", flush=True)
        tree = ClassTree.from_json(args.tree, classes, where=f"--tree {args.tree}")
        losses = Losses(tree, len(classes), args.sd_epsilon, args.sd_iterations)
        dist = tree.distances()[:len(classes), :len(classes)]
        path = os.path.join(args.out, "runs.json")
        runs = json.load(open(path)) if os.path.isfile(path) else []
        for per_class in args.per_class:
            keep = torch.cat([torch.nonzero(pool[1] == c)[:per_class, 0] for c in range(len(classes))])
            train = (pool[0][keep], pool[1][keep])
            for loss in args.losses:
                for seed in args.seeds:
                    if any(r["per_class"] == per_class and r["loss"] == loss and r["seed"] == seed for r in runs):
                        continue
                    print(f"{per_class} per class, {loss}, seed {seed}", flush=True)
                    run = train_one(loss, seed, train, test, losses, dist,
                                    argparse.Namespace(**{**vars(args), "epochs": epochs[per_class]}))
                    runs.append({"per_class": per_class, "loss": loss, "seed": seed, "epochs": epochs[per_class],
                                 "image_size": args.image_size, "classes": len(classes), **run})
                    tmp = path + ".tmp"
                    with open(tmp, "w") as f:
                        json.dump(runs, f, indent=1)
                    os.replace(tmp, path)
        # every run in runs.json, also those of earlier invocations
        settings = sorted({r["per_class"] for r in runs})
        names = [name for name in LOSSES if any(r["loss"] == name for r in runs)]
        with open(os.path.join(args.out, "table.md"), "w") as f:
            f.write(table(runs, settings, names))
        plot(runs, settings, names, os.path.join(args.out, "curves.png"))
        print(table(runs, settings, names))
        print(f"tree distance unit: {losses.scale:.3f} WordNet edges (the mean class-to-class distance)")
    except FewShotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
