"""Command-line entry points behind ``train.py`` and ``eval.py``.

Flags map onto config keys; any other key is set with ``key.sub=value``. Errors
caused by the user's input end with a one-paragraph message and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from .config import load_config
from .errors import FewShotError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "default.yaml")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors (``--stage bogus``, ``--way three``) are the one-line form of every
    other bad input (``error: train.py: argument --way: invalid int value: 'three'``, exit 2)
    instead of a usage block; ``--help`` is unchanged."""

    def error(self, message: str):
        raise FewShotError(f"{self.prog}: {message} (see {self.prog} --help)")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", help="dataset root (data.root)")
    parser.add_argument("--dataset", help="dataset layout (data.name), e.g. cub_official: with "
                        "eval.py, evaluates a trained model on another dataset without retraining")
    parser.add_argument("--way", type=int, help="classes per episode (episode.n_way)")
    parser.add_argument("--shot", type=int, help="support images per class (episode.n_shot)")
    parser.add_argument("--query", type=int, help="query images per class")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (run.device)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="set any config key, e.g. meta.lr=0.001 model.options.solver=exact")


def _positive(text: str) -> int:
    """argparse type of a count flag: an integer >= 1 (0 is never read as 'the default')."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parse(parser: argparse.ArgumentParser, argv: Optional[List[str]]) -> argparse.Namespace:
    """Parse flags; ``key=value`` overrides may stand anywhere among them."""
    args, rest = parser.parse_known_args(argv)
    bad = [r for r in rest if r.startswith("-") or "=" not in r]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = list(args.overrides) + rest
    return args


# eval.py and visualize.py flags -> config keys (a flag a parser lacks is skipped)
EVAL_FLAGS = {"data_root": "data.root", "dataset": "data.name", "way": "episode.n_way",
              "shot": "episode.n_shot", "query": "eval.n_query", "device": "run.device",
              "episodes": "eval.episodes", "episodes_file": "eval.episodes_file",
              "split": "eval.split", "seed": "eval.seed"}


def _flag_overrides(args: argparse.Namespace, mapping: dict) -> List[str]:
    out = []
    for attr, key in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            out.append(f"{key}={value}")
    return out


def _one_line(e: FewShotError) -> str:
    """The message of ``e`` on one line. An error raised in a DataLoader worker arrives
    re-raised with the worker's traceback in its message; its last line is the message."""
    text = str(e).strip()
    if "\nOriginal Traceback" in text:
        text = text.splitlines()[-1]
        name = type(e).__name__
        text = text.split(f"{name}: ", 1)[1] if f"{name}: " in text else text
    return " ".join(text.split("\n"))


def _result_path(checkpoint: str, config, info: dict, n_way: int, n_shot: int, n_episodes: int) -> str:
    """The default result file beside the checkpoint (in runs/eval/ of the working folder for a
    shipped model's name, which it starts with), named by what it measured (dataset, split,
    way/shot, method and solver, episodes, seed or manifest); an existing file is never replaced
    (written with ``_2``, ``_3``, ... appended, see :func:`write_new_text`)."""
    ev = config.eval
    method = config.model.method + (f"-{info['eval_solver']}" if "eval_solver" in info else "")
    normalize = (config.model.options or {}).get("normalize")
    method += f"-{normalize}" if normalize else ""
    episodes = (f"{os.path.splitext(os.path.basename(ev.episodes_file))[0]}" if ev.episodes_file
                else f"seed{ev.seed}")
    folder, name = os.path.dirname(os.path.abspath(checkpoint)), ""
    if not os.path.isfile(checkpoint):                    # a shipped model's name
        folder, name = os.path.abspath(os.path.join("runs", "eval")), checkpoint + "_"
    return os.path.join(folder, f"eval_{name}{config.data.name}_{ev.split}_{n_way}way{n_shot}shot_{method}_"
                        f"{n_episodes}ep_{episodes}.json")


def _check_outputs(outputs: dict, inputs: dict) -> None:
    """Every output path is new: it names no existing file, no input and no other output.
    ``outputs``: flag -> a path or a list of paths (one flag may write several files);
    ``inputs``: flag -> a path or a list of paths (a path inside an input folder counts too; one
    that does not exist, such as a shipped model's name, is no file to protect)."""
    seen = {}
    listed = lambda mapping: [(flag, p) for flag, paths in mapping.items() if paths  # noqa: E731
                              for p in ([paths] if isinstance(paths, str) else paths)]
    ins = [(flag, os.path.realpath(p)) for flag, p in listed(inputs) if os.path.exists(p)]
    for flag, path in listed(outputs):
        real = os.path.realpath(path)
        for in_flag, source in ins:
            if real == source or real.startswith(source.rstrip(os.sep) + os.sep):
                raise FewShotError(f"{flag} {path!r} names the input {in_flag} {source!r}; an output never "
                                   f"replaces or joins an input: choose another path")
        if real in seen:
            raise FewShotError(f"{flag} {path!r} is also {seen[real]}; give each output its own path")
        seen[real] = flag
        _check_writable(flag, path)
        if os.path.lexists(path):
            raise FewShotError(f"{flag} {path!r} already exists; an output never replaces a file: "
                               f"choose another path")


def provenance() -> dict:
    """When and with what a result was made: UTC time, the package's git commit (None outside a
    checkout), and the versions of Python and the main packages."""
    import datetime
    import platform
    import subprocess

    import numpy
    import torch
    import torchvision

    from importlib import metadata
    try:
        version = metadata.version("fewshot")
    except metadata.PackageNotFoundError:       # run from a source tree that is not installed
        version = None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit, "versions": {"fewshot": version, "python": platform.python_version(),
                                           "torch": torch.__version__, "torchvision": torchvision.__version__,
                                           "numpy": numpy.__version__}}


def _check_writable(flag: str, path: str) -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise FewShotError(f"{flag} {path!r} is a folder; expected a file path")
    while not os.path.exists(folder):           # created on writing: its nearest existing parent
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise FewShotError(f"{flag} {path!r}: cannot write into {folder!r}")


def _run(main, argv: Optional[List[str]]) -> int:
    from . import _malloc
    from ._io import release_folders
    _malloc.configure()       # image training and evaluation: keep freed activation memory mapped
    try:
        return main(argv)
    except FewShotError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is None:
            raise
        print(f"error: {e.filename!r}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        release_folders()


def _train(argv: Optional[List[str]]) -> int:
    parser = _Parser(
        prog="train.py", description="Train a few-shot classifier (pretrain and/or meta stage).")
    parser.add_argument("--config", help="YAML config (default: with --resume, the run's OUT/config.yaml; "
                        f"else {os.path.relpath(DEFAULT_CONFIG)})")
    parser.add_argument("--stage", choices=["pretrain", "meta", "both"], help="stage(s) to run")
    parser.add_argument("--seed", type=int, help="run.seed")
    parser.add_argument("--out", help="output folder (run.out)")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                        help="continue from CHECKPOINT (default: the stage's last.pt in --out)")
    parser.add_argument("--finetune", metavar="MODEL",
                        help="meta-train MODEL (a best.pt or a shipped name) further on --data-root: its own "
                             "config with the fine-tuning defaults (a step-0 validation, a low meta.lr; "
                             "docs/training.md), then your flags and overrides; needs --out")
    parser.add_argument("--overwrite", action="store_true",
                        help="a stage folder of --out that holds an earlier run is moved aside to "
                             "STAGE.previous-N (without it, such a folder is refused)")
    parser.add_argument("--max-steps", type=_positive, help="stop each stage after N optimisation steps (it still validates on "
                        "{pretrain,meta}.val_episodes episodes at the end; lower them for a quick try)")
    _common(parser)
    args = _parse(parser, argv)
    if args.resume and "=" in args.resume and not os.path.isfile(args.resume):
        raise FewShotError(f"--resume {args.resume!r}: --resume takes an optional checkpoint path, "
                           f"and this looks like a key=value override; put overrides before "
                           f"--resume or name the checkpoint after it")
    overrides = _flag_overrides(args, {
        "data_root": "data.root", "dataset": "data.name", "way": "episode.n_way",
        "shot": "episode.n_shot", "query": "episode.n_query", "seed": "run.seed", "device": "run.device", "out": "run.out",
        "max_steps": "run.max_steps", "stage": "run.stage"}) + args.overrides
    if args.resume is not None and args.overwrite:
        raise FewShotError("--resume continues the run in --out and --overwrite moves it aside: pass one")
    if args.finetune is not None:
        return _finetune(args, overrides)
    config_path = args.config
    if config_path is None:
        run_config = os.path.join(args.out or "", "config.yaml")
        if args.resume is not None and args.out and os.path.isfile(run_config):
            config_path = run_config              # the run folder is enough to resume it
            print(f"resuming the run in {args.out} with its config {run_config}")
        else:
            config_path = DEFAULT_CONFIG
    config = load_config(config_path, overrides)
    from .engine import meta_train, pretrain  # heavy imports after the arguments are checked

    stage = config.run.stage
    if stage not in ("pretrain", "meta", "both"):
        raise FewShotError(f"run.stage: {stage!r} is not one of pretrain, meta, both")
    if stage in ("pretrain", "both"):
        best = pretrain(config, resume=args.resume, overwrite=args.overwrite)
        if stage == "both":
            config.meta.pretrained = best
    if stage in ("meta", "both"):
        meta_train(config, resume=args.resume, overwrite=args.overwrite)
    return 0


def _finetune(args: argparse.Namespace, overrides: List[str]) -> int:
    """``train.py --finetune MODEL``: the meta stage from MODEL's own config and weights."""
    from .api import resolve_checkpoint
    from .config import FINETUNE_DEFAULTS, build_config, merge
    from ._io import load_checkpoint
    for flag, given in (("--config", args.config), ("--stage", args.stage)):
        if given is not None:
            raise FewShotError(f"--finetune takes the model's own config and trains its meta stage; drop {flag}")
    if not args.out:
        raise FewShotError("--finetune needs --out (a new folder for the fine-tuned model)")
    path = resolve_checkpoint(args.finetune, "--finetune")
    state = load_checkpoint(path)
    data = state.get("config")
    if not isinstance(data, dict) or state.get("stage", "meta") != "meta":      # shipped models: no stage
        raise FewShotError(f"--finetune {args.finetune!r}: expected a meta-trained few-shot model (a meta "
                           f"best.pt or a shipped name); to start from a pretrained backbone use "
                           f"--config ... meta.pretrained={args.finetune}")
    data = merge(data, {**FINETUNE_DEFAULTS, "meta": {**FINETUNE_DEFAULTS["meta"], "pretrained": args.finetune}})
    config = build_config(data, overrides, f"--finetune {args.finetune!r}")
    from .engine import meta_train
    print(f"fine-tuning {args.finetune}: meta.lr {config.meta.lr:g}, {config.meta.epochs} epochs of "
          f"{config.meta.episodes_per_epoch} episodes, validated first on {config.meta.val_episodes} episodes")
    meta_train(config, resume=args.resume, overwrite=args.overwrite)
    return 0


def _eval(argv: Optional[List[str]]) -> int:
    parser = _Parser(
        prog="eval.py", description="Evaluate a checkpoint on fixed few-shot episodes.")
    parser.add_argument("--checkpoint", required=True, help="a best.pt / last.pt written by train.py")
    parser.add_argument("--episodes", type=_positive, help="number of episodes (default 5000 for 1-shot, 600 otherwise)")
    parser.add_argument("--episodes-file", help="evaluate on the episodes of this manifest (JSON/CSV)")
    parser.add_argument("--write-episodes", help="write the evaluated episodes to this manifest")
    parser.add_argument("--split", help="split to evaluate (eval.split, default test)")
    parser.add_argument("--seed", type=int, help="episode seed (eval.seed)")
    parser.add_argument("--result", help="JSON result path (default: next to the checkpoint)")
    parser.add_argument("--no-cache", action="store_true", help="encode images per episode")
    _common(parser)
    args = _parse(parser, argv)
    import torch

    from .data import write_manifest
    from .engine import episode_sampler, evaluate, format_result, load_trained
    from .engine.evaluate import progress_bars
    from ._io import write_new_text

    overrides = _flag_overrides(args, EVAL_FLAGS)
    config, model = load_trained(args.checkpoint, overrides + args.overrides)
    device = next(model.parameters()).device
    e, ev = config.episode, config.eval
    explicit_seed = args.seed is not None or any(o.startswith("eval.seed=") for o in args.overrides)
    if not explicit_seed and not ev.episodes_file and ev.split == config.data.val_split:
        # the training run chose its best checkpoint on the val episodes of eval.seed: evaluate
        # on others unless asked (--seed, or the selection manifest with --episodes-file)
        ev.seed = ev.seed + 1
        print(f"episode seed {ev.seed}: the checkpoint was selected on the {ev.split} episodes of seed "
              f"{ev.seed - 1} (pass --seed {ev.seed - 1} to evaluate on those)")
    sampler = episode_sampler(config, ev.split, e.n_way, e.n_shot, ev.n_query, ev.seed,
                              ev.episodes_file)
    n_way, n_shot = sampler.n_way, sampler.n_shot
    if ev.episodes_file:              # the manifest fixes the episodes: a flag may not say otherwise
        for flag, asked, fixed in (("--way", args.way, n_way), ("--shot", args.shot, n_shot),
                                   ("--query", args.query, sampler.n_query)):
            if asked is not None and asked != fixed:
                raise FewShotError(f"{flag} {asked} contradicts --episodes-file {ev.episodes_file!r}, whose "
                                   f"episodes are {n_way}-way {n_shot}-shot with {sampler.n_query} queries "
                                   f"per class; drop {flag} or use another manifest")
    n_episodes = ev.episodes or (len(sampler) if ev.episodes_file else (5000 if n_shot == 1 else 600))
    if ev.episodes_file and n_episodes > len(sampler):
        raise FewShotError(f"--episodes {n_episodes} exceeds the {len(sampler)} episodes of "
                           f"{ev.episodes_file!r}")
    info = getattr(model, "describe", lambda: {})()
    path = args.result or _result_path(args.checkpoint, config, info, n_way, n_shot, n_episodes)
    inputs = {"--checkpoint": args.checkpoint,
              "--episodes-file": ev.episodes_file, "--data-root": config.data.root}
    _check_outputs({"--write-episodes": args.write_episodes, "--result": args.result}, inputs)
    if not args.result:                  # the default name: numbered on writing if taken
        _check_writable("--result", path)
    print(f"evaluating {args.checkpoint}: {config.model.method}/{config.model.backbone}, "
          f"{n_way}-way {n_shot}-shot, {n_episodes} episodes of split {ev.split!r} on {device}")
    if config.run.channels_last:
        model.to(memory_format=torch.channels_last)
    result = evaluate(model, sampler, n_episodes, device, cache_features=not args.no_cache,
                      progress=progress_bars(config.run.progress), channels_last=config.run.channels_last)
    config.data.root = os.path.abspath(config.data.root)
    if ev.episodes_file:
        ev.episodes_file = os.path.abspath(ev.episodes_file)
    result.update({"checkpoint": os.path.abspath(args.checkpoint) if os.path.isfile(args.checkpoint)
                   else args.checkpoint, "method": config.model.method,
                   "backbone": config.model.backbone, "dataset": config.data.name,
                   "split": ev.split, "n_way": n_way, "n_shot": n_shot,
                   "n_query": sampler.n_query, "seed": ev.seed,
                   "episodes_file": ev.episodes_file, **info,
                   "overrides": overrides + list(args.overrides), "config": config.to_dict(),
                   "provenance": provenance()})
    print(f"{n_way}-way {n_shot}-shot accuracy: {format_result(result)}"
          + "".join(f", {k}={v}" for k, v in info.items()))
    path = write_new_text(path, json.dumps(result, indent=1), numbered=not args.result)
    print(f"result written to {path}")
    if args.write_episodes:
        write_manifest(args.write_episodes, sampler.dataset,
                       [sampler.indices(i) for i in range(n_episodes)], n_shot, sampler.n_query)
        print(f"episodes written to {args.write_episodes}")
    return 0


def _check_picture_path(parser, flag: str, path: str) -> None:
    """A usage error unless ``path`` ends in an extension matplotlib writes."""
    from matplotlib.figure import Figure
    kinds = Figure().canvas.get_supported_filetypes()
    if os.path.splitext(path)[1].lower().lstrip(".") not in kinds:
        parser.error(f"argument {flag}: {path!r} is not a picture file matplotlib writes; end it in "
                     f"{', '.join('.' + k for k in sorted(kinds))}")


def _visualize(argv: Optional[List[str]]) -> int:
    parser = _Parser(
        prog="visualize.py", description="Draw what a DeepEMD checkpoint matched in one episode.")
    parser.add_argument("--checkpoint", required=True, help="a DeepEMD best.pt / last.pt")
    parser.add_argument("--episode", type=int, default=0, help="episode index (default 0)")
    parser.add_argument("--episodes-file", help="take the episode from this manifest")
    parser.add_argument("--split", help="split (eval.split of the checkpoint by default)")
    parser.add_argument("--seed", type=int, help="episode seed (eval.seed) when no manifest is given")
    parser.add_argument("--queries", type=int, nargs="+", default=[0],
                        help="query indices to draw (default: 0)")
    parser.add_argument("--top-flows", type=int, default=10, help="largest flows drawn per pair")
    parser.add_argument("--per-query", action="store_true",
                        help="one PNG per query (OUT_q<index>.png) instead of one sheet")
    parser.add_argument("--out", required=True, help="PNG path")
    _common(parser)
    args = _parse(parser, argv)
    if args.top_flows < 0:
        parser.error(f"argument --top-flows: expected a count >= 0, got {args.top_flows}")
    _check_picture_path(parser, "--out", args.out)
    from .engine import episode_sampler, load_trained
    from .viz import draw, explain_episode

    overrides = _flag_overrides(args, EVAL_FLAGS)
    config, model = load_trained(args.checkpoint, overrides + args.overrides)
    if not model.offers_matching:
        raise FewShotError(f"--checkpoint {args.checkpoint!r}: visualize.py draws DeepEMD matchings; "
                           f"this checkpoint is a {config.model.method!r} model")
    e, ev = config.episode, config.eval
    sampler = episode_sampler(config, ev.split, e.n_way, e.n_shot, ev.n_query, ev.seed, ev.episodes_file)
    if args.episode < 0 or (ev.episodes_file and args.episode >= len(sampler)):
        raise FewShotError(f"--episode {args.episode}: expected 0 .. "
                           f"{len(sampler) - 1 if ev.episodes_file else 'any'}")
    episode = sampler.episode(args.episode)
    n_queries = len(episode.query_labels)
    bad = [q for q in args.queries if not 0 <= q < n_queries]
    if bad:
        raise FewShotError(f"--queries {bad}: the episode has queries 0 .. {n_queries - 1}")
    paths = ([f"{os.path.splitext(args.out)[0]}_q{q}.png" for q in args.queries] if args.per_query
             else [args.out])
    _check_outputs({"--out": paths},
                   {"--checkpoint": args.checkpoint,
                    "--episodes-file": ev.episodes_file, "--data-root": config.data.root})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    explanations = explain_episode(model, episode, args.queries, args.top_flows)
    groups = [[x] for x in explanations] if args.per_query else [explanations]
    for group, path in zip(groups, paths):
        figure = draw(group, episode)
        figure.savefig(path, dpi=110)
        print(f"episode {args.episode}, queries {[x.query for x in group]}: written {path}")
    return 0


def _images_in(folder: str, flag: str) -> List[str]:
    from .data.datasets import IMAGE_EXTENSIONS, list_images
    files = list_images(folder)
    if not files:
        raise FewShotError(f"{flag} {folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def _predict(argv: Optional[List[str]]) -> int:
    parser = _Parser(prog="predict.py", description="Classify your own images: which of the support "
                     "classes does each query image show?")
    parser.add_argument("--checkpoint", required=True, help="a best.pt written by train.py, or a shipped "
                        "model's name (fewshot.models_available())")
    parser.add_argument("--support", required=True, help="folder with one sub-folder of images per class "
                        "(1 or more each: the shot count follows the folders)")
    parser.add_argument("--query", required=True, nargs="+", help="query image files or folders of images")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    parser.add_argument("--explain", metavar="OUT.png", help="draw what DeepEMD matched for each query "
                        "(as visualize.py): OUT.png for one query, OUT_q<i>.png for query i of several")
    parser.add_argument("--top-flows", type=int, default=10, help="largest flows drawn (--explain)")
    args = parser.parse_args(argv)
    if args.explain:
        _check_picture_path(parser, "--explain", args.explain)
    if args.top_flows < 0:
        parser.error(f"argument --top-flows: expected a count >= 0, got {args.top_flows}")
    from .api import support_folder
    support, labels = support_folder(args.support)
    classes = list(dict.fromkeys(labels))
    queries = []
    for q in args.query:
        if os.path.isdir(q):
            queries += _images_in(q, "--query")
        elif os.path.isfile(q):
            queries.append(q)
        else:
            raise FewShotError(f"--query {q!r}: no such file or folder")
    if args.explain:
        stem, ext = os.path.splitext(args.explain)
        pictures = [args.explain] if len(queries) == 1 else [f"{stem}_q{i}{ext}" for i in range(len(queries))]
        _check_outputs({"--explain": pictures},
                       {"--support": args.support, "--query": args.query,
                        "--checkpoint": args.checkpoint})
    from .api import load
    clf = load(args.checkpoint, device=args.device)
    if args.explain and not clf.model.offers_matching:
        raise FewShotError(f"--explain: the {clf.config.model.method!r} model of --checkpoint "
                           f"{args.checkpoint!r} has no matching to draw (DeepEMD models do)")
    crops = (clf.config.data.options or {}).get("bounding_box")
    note = (f"{args.checkpoint} was trained on images cropped to their object's bounding box (CUB "
            f"birds): crop each support and query photo to the object first (on whole photos it is "
            f"about 10 points less accurate)") if crops else None
    if note:
        print(f"note: {note}", file=sys.stderr)
    clf.fit(support, labels)
    proba = clf.predict_proba(queries)
    if args.explain:
        from .viz import draw
        os.makedirs(os.path.dirname(os.path.abspath(args.explain)), exist_ok=True)
        explanations, episode = clf.explain(queries, args.top_flows)
        names = [os.path.basename(q) for q in queries]
        for e, path in zip(explanations, pictures):
            draw([e], episode, query_names=names).savefig(path, dpi=110)
    else:
        pictures = []
    shots = sorted({labels.count(c) for c in classes})
    rows = [{"query": q, "prediction": classes[int(p.argmax())],
             "probabilities": {c: round(float(v), 4) for c, v in zip(classes, p)}} for q, p in zip(queries, proba)]
    if args.json:
        for r, path in zip(rows, pictures):
            r["explanation"] = path
        print(json.dumps({"checkpoint": clf.source, "classes": classes, "support_images": len(support),
                          "queries": rows, **({"note": note} if note else {})}, indent=1))
        return 0
    print(f"{clf.source}: {len(classes)} classes, {'/'.join(map(str, shots))} support image(s) per class")
    for r in rows:
        ranked = sorted(r["probabilities"].items(), key=lambda kv: -kv[1])
        print(f"{r['query']}: {r['prediction']} ({ranked[0][1]:.2f}); "
              + ", ".join(f"{c} {p:.2f}" for c, p in ranked[1:4]))
    for path in pictures:
        print(f"written {path}")
    return 0


def predict_main(argv: Optional[List[str]] = None) -> int:
    return _run(_predict, argv)


def visualize_main(argv: Optional[List[str]] = None) -> int:
    return _run(_visualize, argv)


def train_main(argv: Optional[List[str]] = None) -> int:
    return _run(_train, argv)


def eval_main(argv: Optional[List[str]] = None) -> int:
    return _run(_eval, argv)
