"""Small-data classification with hierarchy-aware losses (Martinez et al. 2016, Fig. 7 analogue).

A Conv-4 with a linear head is trained from scratch on the classes of the given splits of a
miniImageNet-layout dataset (train + val: 80 classes) with ``--per-class`` training images per
class (each setting, e.g. 50 and 300), and tested on held-out images of the same classes (the
same ``--test-per-class`` images for every setting), with each loss. The tree's edge lengths
are WordNet edges (unit edges, as in the paper) unless a loss says otherwise.

The paper's rows:
  ce          cross-entropy
  emd2        relaxed EMD^2 between softmax and one-hot label on the WordNet tree (closed form)
  ce+emd2     CE + EMD^2, 1:1
  sd+ce       the Sinkhorn distance with the paper's gradient (log u / lambda, exact for a one-hot
              target: ``fewshot.emd.hierarchy.sinkhorn_onehot_loss``) + 3 CE (SD : CE = 1 : 3),
              lambda ``--sd-lambda`` per WordNet edge
Baselines of Bertinetto et al. 2020:
  soft        cross-entropy against soft labels softmax(-beta LCA height / max height), ``--soft-beta``
  hxe         hierarchical cross-entropy, ``--hxe-alpha``
  (CRM, Karthik et al. 2021, is applied at test time to every model: the "crm" metrics)
This project's variants:
  ce+emd      CE + the exact tree EMD (rho = 1) = CE + the expected tree distance
  ce+emd2-scaled  CE + EMD^2 on edge lengths divided by the mean class-to-class distance

Measured on the test images after each ``--eval-every`` epochs: top-1 error, mistake severity
(mean height of the lowest common ancestor of prediction and truth over the mistakes), the
average hierarchical distance of the top-1 and top-5 predictions (mean LCA height, a correct
class counting 0), the holistic error (expected tree distance of the prediction to the label,
sum_c p_c d(c, y), in WordNet edges) and the tree distance of the top-1 prediction; the same
for the CRM decision. Every (setting, loss, seed) uses the same schedule; seeds change the
weights, the training subset order and the augmentation, not the images.

    python scripts/hierarchy_small_data.py --data-root PATH/miniimagenet --out OUT
    (or make hierarchy-small-data MINI=PATH)

Writes OUT/runs.json (every run and its curve), OUT/table.md (mean +- 95% CI over seeds) and
OUT/curves.png; a finished run is not repeated when OUT/runs.json already holds it.
``--report`` only rewrites the table and the plot from OUT/runs.json (and from the runs.json of
each ``--merge`` folder).
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

from fewshot.data.datasets import build_dataset
from fewshot.emd.hierarchy import (ClassTree, HXELoss, crm_scores, hierarchy_metrics, lca_heights,
                                   sinkhorn_onehot_loss, soft_labels, tree_emd)
from fewshot.errors import FewShotError
from fewshot.models.backbones import create_backbone

LOSSES = ("ce", "emd2", "ce+emd2", "sd+ce", "soft", "hxe", "ce+emd", "ce+emd2-scaled")
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
    """The training losses of the experiment on one class tree (edge lengths in WordNet edges)."""

    def __init__(self, tree: ClassTree, n_classes: int, sd_lambda: float, soft_beta: float, hxe_alpha: float):
        self.dist = tree.distances()[:n_classes, :n_classes]
        self.severity = lca_heights(tree, n_classes)
        self.scale = float(self.dist.sum() / (n_classes * (n_classes - 1)))
        self.tree = tree
        self.scaled = ClassTree(tree.parents, (tree.lengths / self.scale).tolist())
        self.cost = self.dist.float()
        self.hxe = HXELoss(tree, n_classes, hxe_alpha)
        self.sd_lambda, self.soft_beta = sd_lambda, soft_beta
        self.C = n_classes

    def emd(self, logits, labels, rho, tree=None):
        p = logits.softmax(-1)                      # mass on the classes: eq. 15's gradient
        q = torch.zeros_like(p).scatter_(1, labels[:, None], 1.0)
        return tree_emd(p, q, tree or self.tree, rho=rho).mean()

    def __call__(self, name, logits, labels):
        ce = lambda: F.cross_entropy(logits, labels)  # noqa: E731
        if name == "ce":
            return ce()
        if name == "emd2":
            return self.emd(logits, labels, 2.0)
        if name == "ce+emd2":
            return ce() + self.emd(logits, labels, 2.0)
        if name == "sd+ce":
            sd = sinkhorn_onehot_loss(logits.softmax(-1), labels, self.cost, self.sd_lambda).mean()
            return sd + 3.0 * ce()
        if name == "soft":
            target = soft_labels(labels, self.severity, self.soft_beta).to(logits)
            return -(target * logits.log_softmax(-1)).sum(1).mean()
        if name == "hxe":
            return self.hxe(logits, labels)
        if name == "ce+emd":
            return ce() + self.emd(logits, labels, 1.0)
        if name == "ce+emd2-scaled":
            return ce() + self.emd(logits, labels, 2.0, self.scaled)
        raise FewShotError(f"--losses: unknown loss {name!r}; choose from {', '.join(LOSSES)}")


@torch.no_grad()
def evaluate(model, images, labels, losses, mean, std, batch=500):
    """The test metrics of the argmax decision and, under "crm", of the CRM decision."""
    model.eval()
    prob = torch.cat([model((images[i:i + batch].float() / 255 - mean) / std).softmax(-1).double()
                      for i in range(0, len(images), batch)])
    model.train()
    out = {}
    for name, scores in (("", prob), ("crm_", crm_scores(prob, losses.severity))):
        point = hierarchy_metrics(scores, labels, losses.severity, k=5)
        pred = scores.argmax(-1)
        point["top1_distance"] = float(losses.dist[pred, labels].mean())
        out.update({name + key: value for key, value in point.items()})
    out["holistic"] = float((prob * losses.dist[:, labels].t()).sum(1).mean())
    return out


def train_one(loss_name, seed, train, test, losses, args):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, labels = train
    model = nn.Sequential(create_backbone("conv4"), nn.Linear(64, losses.C)).to(memory_format=torch.channels_last)
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
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                logits = model(x.contiguous(memory_format=torch.channels_last))
            loss = losses(loss_name, logits.float(), labels[idx])      # every loss in float32
            if not torch.isfinite(loss):
                raise FewShotError(f"{loss_name} seed {seed}: the loss became {float(loss)} at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            steps += 1
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            train_seconds = time.time() - start
            point = evaluate(model, *test, losses, mean, std)
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


COLUMNS = (("top1_error", "top-1 error %", 2), ("mistake_severity", "mistake severity (LCA height)", 2),
           ("hdist_at_1", "hdist@1", 2), ("hdist_at_5", "hdist@5", 2),
           ("holistic", "holistic error (expected tree distance)", 2))


def table(runs, settings, loss_names):
    """Mean +- 95% CI over seeds of each column; the CRM decision as a row under each loss."""
    lines = ["| train images per class | loss | seeds | " + " | ".join(c[1] for c in COLUMNS)
             + " | training time per run |", "|---|---|---|" + "---|" * len(COLUMNS) + "---|"]
    for per_class in settings:
        for loss in loss_names:
            rs = [r for r in runs if r["per_class"] == per_class and r["loss"] == loss]
            if not rs:
                continue
            for prefix, label in (("", loss), ("crm_", f"{loss} + CRM at test time")):
                if prefix and not all(prefix + "top1_error" in r["final"] for r in rs):
                    continue
                cells = []
                for key, _, digits in COLUMNS:
                    key = key if key == "holistic" else prefix + key
                    if prefix and key == "holistic":
                        cells.append("")               # the probabilities are the model's
                        continue
                    m, h = ci([r["final"][key] for r in rs])
                    cells.append(f"{m:.{digits}f} +- {h:.{digits}f}")
                secs = np.mean([r["final"]["train_seconds"] for r in rs])
                lines.append(f"| {per_class} | {label} | {len(rs)} | " + " | ".join(cells) + f" | {secs:.0f} s |")
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


def report(runs, out):
    settings = sorted({r["per_class"] for r in runs})
    names = [name for name in LOSSES if any(r["loss"] == name for r in runs)]
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table(runs, settings, names))
    plot(runs, settings, names, os.path.join(out, "curves.png"))
    print(table(runs, settings, names))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", help="miniImageNet in the CSV layout (not with --report)")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--tree", default=os.path.join(os.path.dirname(__file__), "..", "configs", "trees",
                                                        "miniimagenet_wordnet.json"))
    parser.add_argument("--per-class", type=int, nargs="+", default=[50, 300])
    parser.add_argument("--epochs", type=int, nargs="+", default=[30, 15],
                        help="epochs of each --per-class setting (one value: all)")
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--losses", nargs="+", default=list(LOSSES[:6]), choices=LOSSES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--eval-every", type=int, default=3)
    parser.add_argument("--sd-lambda", type=float, default=1.0, help="Sinkhorn lambda per WordNet edge (sd+ce)")
    parser.add_argument("--soft-beta", type=float, default=10.0, help="soft labels' beta (soft)")
    parser.add_argument("--hxe-alpha", type=float, default=0.1, help="HXE's alpha per WordNet edge of depth (hxe)")
    parser.add_argument("--bf16", action="store_true",
                        help="the network under bfloat16 autocast (CPUs with avx512_bf16 / amx_bf16); losses in float32")
    parser.add_argument("--out", required=True)
    parser.add_argument("--report", action="store_true", help="only write the table and plot from runs.json")
    parser.add_argument("--merge", nargs="*", default=[], help="with --report: more run folders to include")
    args = parser.parse_args(argv)
    if args.merge and not args.report:
        parser.error("--merge needs --report")
    if args.report:
        runs = []
        for folder in [args.out] + args.merge:
            path = os.path.join(folder, "runs.json")
            if not os.path.isfile(path):
                parser.error(f"--report: {path} does not exist")
            runs += json.load(open(path))
        report(runs, args.out)
        return 0
    if args.data_root is None:
        parser.error("--data-root is required (except with --report)")
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
        losses = Losses(tree, len(classes), args.sd_lambda, args.soft_beta, args.hxe_alpha)
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
                    run = train_one(loss, seed, train, test, losses,
                                    argparse.Namespace(**{**vars(args), "epochs": epochs[per_class]}))
                    runs.append({"per_class": per_class, "loss": loss, "seed": seed, "epochs": epochs[per_class],
                                 "image_size": args.image_size, "classes": len(classes),
                                 "settings": {"bf16": args.bf16, "sd_lambda": args.sd_lambda, "soft_beta": args.soft_beta,
                                              "hxe_alpha": args.hxe_alpha}, **run})
                    tmp = path + ".tmp"
                    with open(tmp, "w") as f:
                        json.dump(runs, f, indent=1)
                    os.replace(tmp, path)
        report(runs, args.out)       # every run in runs.json, also those of earlier invocations
        print(f"mean class-to-class tree distance: {losses.scale:.3f} WordNet edges")
    except FewShotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
