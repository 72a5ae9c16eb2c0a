"""The gradient of CE, EMD and EMD^2 with respect to the logits on a class tree (the analogue of
Fig. 5 of Martinez et al. 2016).

One prediction on the 100 miniImageNet classes of the WordNet tree: the label y and a
confident wrong answer w far from it share most of the mass, the rest is spread evenly. For each
loss, d loss / d logit_c is drawn against the tree distance d(c, y): cross-entropy pushes down
every wrong class in proportion to its probability whatever its distance, the tree EMD
(rho = 1) and EMD^2 (rho = 2) push down far classes harder than near ones, and EMD^2 weighs each
subtree by its surplus of mass.

    python scripts/hierarchy_gradients.py --png docs/hierarchy_gradients.png
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

from fewshot.emd.hierarchy import ClassTree, tree_emd

TREE = os.path.join(os.path.dirname(__file__), "..", "configs", "trees", "miniimagenet_wordnet.json")


def gradients(tree: ClassTree, n_classes: int, label: int, wrong: int):
    """Tree distances [C] to the label and d loss / d logits [C] for 'ce', 'emd', 'emd2'."""
    logits = torch.zeros(n_classes, dtype=torch.float64)
    logits[label], logits[wrong] = 3.0, 3.5
    labels = torch.tensor([label])
    out = {}
    for name in ("ce", "emd", "emd2"):
        z = logits[None].clone().requires_grad_(True)
        if name == "ce":
            loss = F.cross_entropy(z, labels)
        else:
            p = z.softmax(-1)
            q = F.one_hot(labels, n_classes).to(p)
            loss = tree_emd(p, q, tree, rho=1.0 if name == "emd" else 2.0).sum()
        out[name] = torch.autograd.grad(loss, z)[0][0]
    return tree.distances()[label, :n_classes], out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", default=TREE)
    parser.add_argument("--png", required=True)
    args = parser.parse_args(argv)
    import json
    spec = json.load(open(args.tree))
    nodes, parents = spec["nodes"], spec["parents"]
    classes = [n for i, n in enumerate(nodes) if i not in set(parents)]   # the leaves
    tree = ClassTree.from_json(args.tree, classes)
    C = len(classes)
    dist_all = tree.distances()[:C, :C]
    label = 0
    wrong = int(dist_all[label].argmax())
    dist, grads = gradients(tree, C, label, wrong)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharex=True)
    titles = {"ce": "cross-entropy", "emd": "tree EMD (rho = 1)", "emd2": "tree EMD^2 (rho = 2)"}
    for ax, (name, g) in zip(axes, grads.items()):
        colours = ["tab:green" if c == label else "tab:red" if c == wrong else "tab:blue" for c in range(C)]
        ax.scatter(dist.numpy(), g.numpy(), c=colours, s=14)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(titles[name])
        ax.set_yscale("symlog", linthresh=0.01)      # linear within +-0.01, where most classes are
        ax.set_xlabel("tree distance to the label (edges)")
    axes[0].set_ylabel("d loss / d logit (symlog)")
    fig.suptitle(f"Gradient on the logits, {C} miniImageNet classes: label (green) p = "
                 f"{float(torch.tensor([3.0, 3.5] + [0.0] * (C - 2)).softmax(0)[0]):.2f}, "
                 f"a far wrong class (red) p = {float(torch.tensor([3.0, 3.5] + [0.0] * (C - 2)).softmax(0)[1]):.2f}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(args.png, dpi=80)
    for name, g in grads.items():
        near = g[(dist > 0) & (dist <= dist[dist > 0].min() + 2)].mean()
        far = g[dist >= dist.max() - 2].mean()
        print(f"{name}: label {float(g[label]):+.4f}, wrong {float(g[wrong]):+.4f}, "
              f"mean near classes {float(near):+.5f}, mean far classes {float(far):+.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
