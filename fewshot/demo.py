"""``make demo``: the main job end to end on the embedded synthetic dataset.

Generates the dataset once (cache folder), meta-trains the demo config on its 64
train classes, then evaluates on the 20 held-out test classes and prints
accuracy +- 95% CI.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from .cli import eval_main, train_main
from .data.synthetic import default_root, generate

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "demo.yaml")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fewshot.demo", description=__doc__)
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--out", help="run folder (default: runs/demo, or runs/demo-N when taken)")
    parser.add_argument("--episodes", type=int, default=600)
    args, extra = parser.parse_known_args(argv)
    start = time.perf_counter()
    if args.out is None:                  # a new folder: a finished run is never written over
        args.out, k = "runs/demo", 2
        while os.path.exists(args.out):
            args.out, k = f"runs/demo-{k}", k + 1
    root = generate(default_root())
    print(f"synthetic dataset: {root} (64 train / 16 val / 20 test classes)")
    code = train_main(["--config", args.config, "--data-root", root, "--out", args.out, *extra])
    if code:
        return code
    code = eval_main(["--checkpoint", os.path.join(args.out, "meta", "best.pt"), "--split", "test",
                      "--episodes", str(args.episodes), "--data-root", root])
    print(f"demo finished in {time.perf_counter() - start:.0f} s "
          f"(chance level for 5-way is 20 %)")
    return code


if __name__ == "__main__":
    sys.exit(main())
