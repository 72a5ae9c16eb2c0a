"""Ship a trained checkpoint as a named model of the package (``fewshot/pretrained/NAME.pt``),
which ``eval.py --checkpoint NAME``, ``predict.py --checkpoint NAME`` and ``fewshot.load(NAME)``
resolve, with its model card (``NAME.md``).

    # 1. the weights: no optimiser state, paths of the training machine reset (--float16: half the size)
    python scripts/ship_model.py weights RUN/meta/best.pt NAME
    # 2. evaluate the shipped weights (eval.py --checkpoint NAME ... --result R1.json / R5.json)
    # 3. the card, from those results and what the run was
    python scripts/ship_model.py card NAME --results R1.json R5.json --about ABOUT.md

The card holds ABOUT.md (training data and split, recipe command and commit, licence of the
training images) followed by a table of the results: what ``eval.py`` measured with the
shipped weights, and the command that reproduces each row.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from fewshot._io import atomic_write_text, load_checkpoint, save_checkpoint  # noqa: E402
from fewshot.api import PRETRAINED_DIR  # noqa: E402

# keys of the training machine that mean nothing elsewhere: reset (None: the config default)
_MACHINE_KEYS = {("run", "out"): None, ("meta", "pretrained"): ""}


def weights(checkpoint: str, name: str, float16: bool = False, folder: str = PRETRAINED_DIR) -> str:
    """Write FOLDER/NAME.pt (default: the package's shipped models): the model's weights (floating-point tensors in float16 with
    ``float16``; else as trained, so the shipped model gives the run's numbers exactly), its config
    with the training machine's paths reset (data.root: ``data/<data.name>``), the source
    checkpoint's stage and step."""
    from fewshot.config import Config, from_dict
    state = load_checkpoint(checkpoint)
    config = state["config"]
    defaults = from_dict(Config, {}, "defaults").to_dict()
    for (section, key), value in _MACHINE_KEYS.items():
        config[section][key] = defaults[section][key] if value is None else value
    config["data"]["root"] = f"data/{config['data']['name']}"        # --data-root says where it is
    model = {k: v.half() if float16 and v.is_floating_point() else v for k, v in state["model"].items()}
    path = os.path.join(folder, name + ".pt")
    save_checkpoint(path, {"config": config, "model": model,
                           "source": {"stage": state.get("stage"), "step": state.get("step"),
                                      "epoch": state.get("epoch"), "best": state.get("best")}})
    print(f"written {path} ({os.path.getsize(path) / 1024:.0f} KB)")
    return path


def card(name: str, results: list, about: str, folder: str = PRETRAINED_DIR) -> str:
    """Write FOLDER/NAME.md: ABOUT followed by the results table."""
    rows = ["| episodes | accuracy +- 95% CI | command |", "|---|---|---|"]
    for path in results:
        with open(path) as f:
            r = json.load(f)
        if r["checkpoint"] != name:
            raise SystemExit(f"error: {path} measured {r['checkpoint']!r}, not the shipped {name!r}")
        episodes = f"{r['n_way']}-way {r['n_shot']}-shot, {r['episodes']} episodes of {r['dataset']} " \
                   f"{r['split']} (episode seed {r['seed']}, {r['n_query']} queries per class)"
        command = (f"`python eval.py --checkpoint {name} --data-root PATH --split {r['split']} "
                   f"--seed {r['seed']} --episodes {r['episodes']}"
                   + (f" --shot {r['n_shot']}" if r["n_shot"] != 1 else "") + "`")
        rows.append(f"| {episodes} | {r['accuracy']:.2f} +- {r['ci95']:.2f} | {command} |")
    with open(about) as f:
        text = f.read().rstrip() + "\n\n## Accuracy of the shipped weights\n\n" + "\n".join(rows) + "\n"
    path = os.path.join(folder, name + ".md")
    atomic_write_text(path, text)
    print(f"written {path}")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("weights", help="write fewshot/pretrained/NAME.pt from a checkpoint")
    w.add_argument("checkpoint")
    w.add_argument("name")
    w.add_argument("--float16", action="store_true", help="store the weights in float16 (half the size)")
    w.add_argument("--dir", default=PRETRAINED_DIR, help="output folder (default: the package's shipped models)")
    c = sub.add_parser("card", help="write fewshot/pretrained/NAME.md")
    c.add_argument("name")
    c.add_argument("--results", nargs="+", required=True, help="eval.py result JSONs of the shipped NAME")
    c.add_argument("--about", required=True, help="markdown: data, split, recipe, commit, licence")
    c.add_argument("--dir", default=PRETRAINED_DIR, help="output folder (default: the package's shipped models)")
    args = parser.parse_args(argv)
    if args.command == "weights":
        weights(args.checkpoint, args.name, args.float16, args.dir)
    else:
        card(args.name, args.results, args.about, args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
