"""kill -9 at any point of a run, ``--resume``, and the run ends as the uninterrupted one:
the same weights, optimiser state and logged losses, bit for bit, with the loaders'
augmentation and with the batch augmentation; no temporary file is left behind.

The kill is real (SIGKILL of a subprocess) and lands at a chosen point: right after a
mid-epoch checkpoint, inside a validation, or halfway through writing a checkpoint.
"""
import glob
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from fewshot.cli import train_main
from fewshot._io import load_checkpoint

from conftest import logged_losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "protonet_demo.yaml")

# Runs train.py's main with one function replaced by a wrapper that SIGKILLs the process
# at a chosen call: argv[1] = "module:function", argv[2] = when (Python expression of
# `n`, the call count, and `args`), argv[3:] = train.py arguments.
KILLER = textwrap.dedent("""
    import importlib, os, signal, sys
    target, when, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    module, name = target.split(":")
    module = importlib.import_module(module)
    original, calls = getattr(module, name), [0]
    def wrapper(*args, **kwargs):
        calls[0] += 1
        n = calls[0]
        if eval(when) == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        out = original(*args, **kwargs)
        if eval(when) == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    setattr(module, name, wrapper)
    from fewshot.cli import train_main
    sys.exit(train_main(argv))
""")

# halfway through a checkpoint write: torch.save writes some bytes, then the process dies
HALF_WRITE = ("torch:save", "(args[1].write(b'PK' * 100) and 'before') if n == 3 else None")


def _args(data, out, *extra):
    return ["--config", CONFIG, "--data-root", data, "--out", out, "--device", "cpu", "--way", "3",
            "--query", "2", "data.image_size=16", "meta.episodes_per_epoch=4", "meta.epochs=3",
            "meta.val_episodes=2", "eval.n_query=2", "pretrain.batch_size=8", "pretrain.epochs=2",
            "pretrain.val_episodes=2", "run.progress=false", "run.log_every=1",
            "run.checkpoint_every=2", "model.backbone_options.hidden=8", "data.transform=deepemd",
            "data.augment=true",
            # DeepEMD-Sampling draws its crops from the global generator in the main process
            # (training and validation): a resumed run must hand it the same state
            "model.method=deepemd", "model.options.patch=sampling", "model.options.num_patch=3",
            "model.options.patch_size=16", *extra]


def _assert_same_run(a_dir, b_dir, stage):
    a = load_checkpoint(os.path.join(a_dir, stage, "last.pt"))
    b = load_checkpoint(os.path.join(b_dir, stage, "last.pt"))
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"] and a["best"] == b["best"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    assert logged_losses(os.path.join(a_dir, stage)) == logged_losses(os.path.join(b_dir, stage))
    assert not glob.glob(os.path.join(b_dir, stage, ".*.tmp")), "a temporary file was left behind"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from conftest import make_split_folders
    return make_split_folders(str(tmp_path_factory.mktemp("resume") / "data"), per_class=6)


@pytest.fixture(scope="module")
def references(data, tmp_path_factory):
    """The uninterrupted runs, per augmentation."""
    out = {}
    for aug in ("loader", "batch"):
        folder = str(tmp_path_factory.mktemp(f"straight_{aug}"))
        assert train_main(_args(data, folder, "--stage", "both", *_augment(aug))) == 0
        out[aug] = folder
    return out


def _augment(aug):
    return ["data.gpu_augment=true"] if aug == "batch" else ["data.workers=1"]


KILLS = {   # where: (function to wrap, when to kill)
    # after the mid-epoch checkpoint of meta step 6 (epoch 1 of steps 5..8)
    "meta_mid_epoch": ("fewshot.engine.checkpoint:save_checkpoint",
                       "'after' if args[1]['stage'] == 'meta' and args[1]['step'] == 6 else None"),
    # inside the second meta validation: last.pt holds step 8, written before it
    "meta_validation": ("fewshot.engine.trainer:evaluate",
                        "'before' if n == 4 else None"),
    # after a mid-epoch pretraining checkpoint
    "pretrain_mid_epoch": ("fewshot.engine.checkpoint:save_checkpoint",
                           "'after' if args[1]['stage'] == 'pretrain' and args[1]['step'] == 2 else None"),
    "checkpoint_write": HALF_WRITE,
}


@pytest.mark.parametrize("aug", ["loader", "batch"])
@pytest.mark.parametrize("where", list(KILLS))
def test_kill_and_resume_equals_uninterrupted(data, references, tmp_path, where, aug):
    if where in ("pretrain_mid_epoch", "checkpoint_write") and aug == "batch":
        pytest.skip("one augmentation suffices for these points")
    out = str(tmp_path / "run")
    args = _args(data, out, "--stage", "both", *_augment(aug))
    target, when = KILLS[where]
    p = subprocess.run([sys.executable, "-c", KILLER, target, when, *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == -9, p.stderr[-2000:]            # it was killed, not finished
    if where == "checkpoint_write":
        assert glob.glob(os.path.join(out, "*", ".*.tmp")), "the kill left no partial file"
    # TensorBoard orders event files by the second in their name, then host and pid: the
    # resumed run's file must be of a later second, as it is whenever a user resumes
    time.sleep(1.1)
    # resume the stage that was interrupted, then (if it was pretraining) the rest
    last = os.path.join(out, "pretrain", "last.pt")
    if not os.path.exists(last) or load_checkpoint(last)["epoch"] < 2:   # killed in pretraining
        assert train_main(_args(data, out, "--stage", "pretrain", *_augment(aug), "--resume")) == 0
        assert train_main(_args(data, out, "--stage", "meta", *_augment(aug),
                                f"meta.pretrained={os.path.join(out, 'pretrain', 'best.pt')}")) == 0
    else:
        assert train_main(_args(data, out, "--stage", "meta", *_augment(aug),
                                f"meta.pretrained={os.path.join(out, 'pretrain', 'best.pt')}",
                                "--resume")) == 0
    for s in ("pretrain", "meta"):
        _assert_same_run(references[aug], out, s)
