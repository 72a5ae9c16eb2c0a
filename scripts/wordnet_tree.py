"""Build the WordNet class tree of a set of ImageNet classes (wnids) for ``pretrain.class_tree``.

Each class ``nXXXXXXXX`` is the WordNet 3.0 noun synset with offset XXXXXXXX in
``data.noun`` (matched by the id field, so re-wrapped copies of the file work too); its parent is its first hypernym (``@`` pointer), up to the root
``entity`` (n00001740). Chains of nodes with a single child are merged into one
edge whose length is the number of WordNet edges it replaces, so tree distances
are WordNet path lengths. Output: JSON {"nodes", "parents", "lengths", "labels"}.

    python scripts/wordnet_tree.py --wordnet PATH/wordnet-3.0 \\
        --classes PATH/miniimagenet/split/*.csv --out configs/trees/miniimagenet_wordnet.json
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys


def read_classes(paths):
    classes = []
    for path in paths:
        with open(path) as f:
            if path.endswith(".csv"):
                rows = list(csv.DictReader(f))
                if not rows or "label" not in rows[0]:
                    sys.exit(f"{path}: expected a CSV with a 'label' column")
                names = [r["label"] for r in rows]
            else:
                # one class per line, its wnid first (ImageNet's LOC_synset_mapping.txt:
                # "n01440764 tench, Tinca tinca")
                names = [line.split()[0] for line in f if line.strip()]
        classes += [c for c in dict.fromkeys(names) if c not in classes]
    return classes


def read_synsets(path):
    """{wnid: (first lemma, first hypernym wnid or None)} of every noun synset in data.noun."""
    synsets = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if not fields or len(fields[0]) != 8 or not fields[0].isdigit():
                continue                            # licence header
            n_words = int(fields[3], 16)
            n_ptr = int(fields[4 + 2 * n_words])
            ptrs = fields[5 + 2 * n_words: 5 + 2 * n_words + 4 * n_ptr]
            hypernyms = ["n" + ptrs[i + 1] for i in range(0, len(ptrs), 4) if ptrs[i] in ("@", "@i")]
            synsets["n" + fields[0]] = (fields[4].replace("_", " "), hypernyms[0] if hypernyms else None)
    return synsets


def build(wordnet_dir, classes):
    synsets = read_synsets(os.path.join(wordnet_dir, "data.noun"))
    parent, label = {}, {}
    todo = list(classes)
    while todo:
        wnid = todo.pop()
        if wnid in label:
            continue
        if wnid not in synsets:
            sys.exit(f"class {wnid!r} is not a WordNet 3.0 noun synset id (n + 8-digit offset)")
        label[wnid], parent[wnid] = synsets[wnid]
        if parent[wnid] is not None:
            todo.append(parent[wnid])
    children = {}
    for v, p in parent.items():
        if p is not None:
            children.setdefault(p, []).append(v)
    keep = lambda v: v in classes or parent[v] is None or len(children.get(v, [])) != 1  # noqa: E731
    nodes = list(classes) + sorted(v for v in parent if v not in classes and keep(v))
    index = {v: i for i, v in enumerate(nodes)}
    parents, lengths = [], []
    for v in nodes:
        p, length = parent[v], 1
        while p is not None and not keep(p):
            p, length = parent[p], length + 1
        parents.append(index[p] if p is not None else -1)
        lengths.append(float(length) if p is not None else 0.0)
    return {"nodes": nodes, "parents": parents, "lengths": lengths, "labels": [label[v] for v in nodes]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wordnet", required=True, help="folder with WordNet 3.0 data.noun")
    parser.add_argument("--classes", nargs="+", required=True, help="CSV split files or text files of wnids")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    tree = build(args.wordnet, read_classes(args.classes))
    with open(args.out, "w") as f:
        json.dump(tree, f, indent=1)
    print(f"{len(tree['nodes'])} nodes written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
