"""The DeepEMD/FEAT CUB class split (100 / 50 / 50) as a ``split.json`` for ``cub_official``.

The DeepEMD and FEAT releases list CUB's few-shot split as ``split/{train,val,test}.csv``
(header ``filename,label[,...]``, one image per row, the label being the class folder of the
official release, e.g. ``159.Black_and_white_Warbler``). This script keeps each split's
classes, in order of first appearance, so that the official ``CUB_200_2011/`` tree (with
bounding boxes) is read with exactly that split:

    python scripts/cub_split.py --csv-dir PATH/split --out PATH/cub/split.json
    python train.py --config configs/conv4_cub.yaml --data-root PATH/cub ...   # reads split.json
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys


def classes_of(csv_path: str):
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or len(rows[0]) < 2 or rows[0][1].strip() != "label":
        raise ValueError(f"{csv_path!r}: expected a header 'filename,label[,...]'")
    seen = {}
    for lineno, row in enumerate(rows[1:], 2):
        if len(row) < 2 or not row[1].strip():
            raise ValueError(f"{csv_path!r}, line {lineno}: expected 'filename,label'")
        seen.setdefault(row[1].strip(), None)
    return list(seen)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv-dir", required=True, help="folder with train.csv, val.csv, test.csv")
    parser.add_argument("--out", required=True, help="split.json to write")
    args = parser.parse_args(argv)
    split = {}
    try:
        for name in ("train", "val", "test"):
            path = os.path.join(args.csv_dir, f"{name}.csv")
            if not os.path.isfile(path):
                raise ValueError(f"{path!r} does not exist")
            split[name] = classes_of(path)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    shared = set(split["train"]) & (set(split["val"]) | set(split["test"])) | (set(split["val"]) & set(split["test"]))
    if shared:
        print(f"error: classes in more than one split: {sorted(shared)[:3]}", file=sys.stderr)
        return 2
    with open(args.out, "w") as f:
        json.dump(split, f, indent=1)
    print(f"{args.out}: " + ", ".join(f"{k} {len(v)} classes" for k, v in split.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
