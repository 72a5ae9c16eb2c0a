"""Every command in the README and the docs names things that exist: the scripts and files it
runs, the Makefile targets, each flag (in the script's own --help), each config file and each
``key=value`` config key (the typed config, the method's, backbone's, dataset's and solver's
options). Placeholders for your paths (PATH, OUT, runs/...) are not checked; what the project
ships is."""
from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys
from functools import lru_cache

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PAGES = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))),
         "datasets/README.md", "benchmarks/README.md"]
ENTRY_POINTS = ("train.py", "eval.py", "predict.py", "visualize.py")
PROGRAMS = re.compile(r"^(\S+=\S+ )*(make |bash scripts/|torchrun |(\S*/)?python3? |(train|eval|predict|visualize)\.py )")
# flags of the entry points that set a config key (cli.py)
FLAG_KEYS = {"--dataset": "data.name", "--way": "episode.n_way", "--shot": "episode.n_shot"}
OVERRIDE = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+)=(.*)$")


def commands(page: str):
    """(page, command) for every shell command of a page: fenced bash blocks (continuation
    lines joined) and inline code spans that start with a program."""
    with open(os.path.join(ROOT, page)) as f:
        text = f.read()
    found = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                found.append(line)
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [span.strip() for span in re.findall(r"`([^`\n]+)`", outside) if PROGRAMS.match(span.strip())]
    return [(page, c) for c in found]


ALL = [pc for page in PAGES for pc in commands(page)]


@lru_cache(maxsize=None)
def help_text(script: str) -> str:
    out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, f"{script} --help failed: {out.stderr[-500:]}"
    return out.stdout


@lru_cache(maxsize=None)
def make_targets():
    with open(os.path.join(ROOT, "Makefile")) as f:
        return set(re.findall(r"^([A-Za-z][\w-]*):", f.read(), re.M))


def check_options(config, keys):
    """Keys under the free-form option mappings are the keyword arguments of what they build."""
    from fewshot import emd
    from fewshot.data.datasets import DATASETS
    from fewshot.models.backbones import BACKBONES
    from fewshot.models.classifier import METHODS
    from fewshot.registry import check_kwargs
    options = config.model.options or {}
    for key in keys:
        parts = key.split(".")
        if parts[:2] == ["model", "options"] and len(parts) >= 3:
            if parts[2] in ("solver_options", "eval_solver_options") and len(parts) == 4:
                solver = options.get(parts[2][:-8]) or options.get("solver") or "exact"
                assert parts[3] in emd.spec(solver).options, f"{key}: not an option of solver {solver!r}"
            else:
                check_kwargs(METHODS.get(config.model.method), {parts[2]: None}, key)
        elif parts[:2] == ["model", "backbone_options"] and len(parts) == 3:
            check_kwargs(BACKBONES.get(config.model.backbone), {parts[2]: None}, key)
        elif parts[:2] == ["data", "options"] and len(parts) == 3:
            check_kwargs(DATASETS.get(config.data.name), {parts[2]: None}, key)


def program(tokens):
    """(kind, script, arguments) of a tokenised command."""
    while tokens and re.match(r"^[A-Z_]+=", tokens[0]):          # VAR=value prefixes
        tokens = tokens[1:]
    head = tokens[0]
    if head == "make":
        return "make", None, tokens[1:]
    if head == "bash":
        return "bash", tokens[1], tokens[2:]
    if head == "torchrun":
        i = next(i for i, t in enumerate(tokens) if t.endswith(".py"))
        return "python", tokens[i], tokens[i + 1:]
    if head.endswith(".py"):
        return "python", head, tokens[1:]
    if tokens[1] == "-m":
        return "module", tokens[2], tokens[3:]
    return "python", tokens[1], tokens[2:]


def test_the_pages_hold_commands():
    pages = {p for p, _ in ALL}
    assert {"README.md", "docs/training.md", "docs/emd.md"} <= pages and len(ALL) > 40


@pytest.mark.parametrize("page,command", ALL, ids=[f"{p}:{c[:60]}" for p, c in ALL])
def test_command_names_what_exists(page, command):
    from fewshot.config import load_config
    tokens = shlex.split(command, comments=True)
    kind, script, args = program(tokens)
    if kind == "make":
        for target in (a for a in args if "=" not in a):
            assert target in make_targets(), f"{page}: make target {target!r} is not in the Makefile"
        return
    if kind == "module":
        import importlib.util
        assert importlib.util.find_spec(script), f"{page}: no module {script}"
        return
    assert os.path.isfile(os.path.join(ROOT, script)), f"{page}: {script} does not exist"
    if kind == "bash":
        return
    flags = [a.split("=")[0] for a in args if a.startswith("--")]
    text = help_text(script)
    for flag in flags:
        assert re.search(re.escape(flag) + r"\b", text), f"{page}: {script} has no flag {flag}"
    if os.path.basename(script) not in ENTRY_POINTS:
        return
    config_file, overrides = None, []
    for i, a in enumerate(args):
        if a == "--config":
            config_file = args[i + 1]
            assert os.path.isfile(os.path.join(ROOT, config_file)), f"{page}: no config {config_file}"
        elif a in FLAG_KEYS:
            overrides.append(f"{FLAG_KEYS[a]}={args[i + 1]}")
        elif OVERRIDE.match(a):
            overrides.append(a)
    config = load_config(os.path.join(ROOT, config_file) if config_file
                         else os.path.join(ROOT, "configs", "default.yaml"), overrides)
    check_options(config, [OVERRIDE.match(o).group(1) for o in overrides])


def test_a_wrong_flag_or_key_is_caught():
    """The checks above can fail: a flag, a key and an option that do not exist."""
    with pytest.raises(AssertionError, match="no flag --nope"):
        test_command_names_what_exists("x", "python eval.py --checkpoint X --nope 3")
    from fewshot.errors import ConfigError
    with pytest.raises(ConfigError, match="nope"):
        test_command_names_what_exists("x", "python train.py --way 5 meta.nope=1")
    with pytest.raises(ConfigError, match="nope"):
        test_command_names_what_exists("x", "python eval.py --checkpoint X model.options.nope=1")
    with pytest.raises(AssertionError, match="make target"):
        test_command_names_what_exists("x", "make recipe-nope")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_link_between_pages_and_its_anchor_exist():
    """[text](page.md#anchor) and [text](#anchor) in the README and the docs: the page exists and
    has a heading with that anchor."""
    pages = PAGES + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "fewshot", "pretrained", "*.md")))
    broken = []
    for page in pages:
        text = open(os.path.join(ROOT, page)).read()
        for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", text, flags=re.S)):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path)) if path else os.path.join(ROOT, page)
            if not os.path.exists(file):
                broken.append(f"{page}: {target} (no such file)")
                continue
            if anchor and file.endswith(".md"):
                headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", open(file).read(), flags=re.S), re.M)
                if anchor not in {_slug(h) for h in headings}:
                    broken.append(f"{page}: {target} (no heading with that anchor)")
    assert not broken, broken


def _first_screen():
    text = open(os.path.join(ROOT, "README.md")).read()
    screen = text[text.index("## Install and try it"):text.index("## Shipped models")]
    blocks = re.findall(r"```(bash|python)\n(.*?)```", screen, re.S)
    bash = [line.split("#")[0].strip() for kind, block in blocks if kind == "bash"
            for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    python = [block for kind, block in blocks if kind == "python"]
    return bash, python


def test_every_command_of_the_readme_first_screen_runs(tmp_path):
    """Each command of the README's first screen, on tiny generated photos: the make targets as
    dry runs (make -n), predict.py, eval.py and train.py --finetune for real (the fine-tuning
    shortened), and the Python snippet with its file names pointing at generated images."""
    from conftest import make_split_folders
    bash, python = _first_screen()
    assert any(c.startswith("make install") for c in bash) and any("predict.py" in c for c in bash)
    assert any("--finetune" in c for c in bash) and any("eval.py" in c for c in bash) and python
    data = make_split_folders(str(tmp_path / "data"), splits=(("train", 5), ("val", 5), ("all", 5)), per_class=16)
    classes = os.path.join(data, "all")
    photos = tmp_path / "photos"
    photos.mkdir()
    first = sorted(os.listdir(classes))[0]
    for f in sorted(os.listdir(os.path.join(classes, first)))[:2]:
        os.link(os.path.join(classes, first, f), photos / f)
    places = {"my_classes/": classes + "/", "my_classes": classes, "photos/": str(photos) + "/", "my_data": data,
              "runs/mine": str(tmp_path / "mine"), ".venv/bin/python": sys.executable, "PATH/miniimagenet": data,
              **{f" {script} ": f" {os.path.join(ROOT, script)} " for script in ENTRY_POINTS}}
    for command in bash:
        for old, new in places.items():
            command = command.replace(old, new)
        argv = shlex.split(command)
        if argv[0] == "make":
            argv = ["make", "-n", *argv[1:]]
        elif "--finetune" in argv:
            argv += ["meta.epochs=1", "meta.episodes_per_epoch=2", "meta.val_episodes=3"]
        elif "eval.py" in argv[1]:
            argv[argv.index("--episodes") + 1] = "3"
        run = subprocess.run(argv, cwd=str(tmp_path) if argv[0] != "make" else ROOT, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, (command, run.stderr[-1500:])
    # the Python snippet, its file names bound to generated images
    snippet = python[0]
    c0, c1 = (os.path.join(classes, c) for c in sorted(os.listdir(classes))[:2])
    files = {"a1.jpg": os.path.join(c0, "0.png"), "a2.jpg": os.path.join(c0, "1.png"),
             "b1.jpg": os.path.join(c1, "0.png"), "q.jpg": os.path.join(c1, "1.png")}
    for name, path in files.items():
        snippet = snippet.replace(f'"{name}"', repr(path))
    snippet = snippet.replace('"my_classes/"', repr(classes))
    run = subprocess.run([sys.executable, "-c", snippet], cwd=str(tmp_path), capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-1500:]
