"""A run folder is owned by one run: a second train.py into it is refused (the first run's files
unchanged), --overwrite moves the earlier run aside, and the folder alone is enough to resume."""
import hashlib
import os

from fewshot.cli import train_main

from test_engine import _args


def _digests(folder):
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            if name != ".lock":
                path = os.path.join(base, name)
                out[os.path.relpath(path, folder)] = hashlib.md5(open(path, "rb").read()).hexdigest()
    return out


def test_a_second_run_into_a_finished_out_is_refused_and_changes_nothing(folder_root, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train_main(_args(folder_root, out, "--stage", "pretrain")) == 0
    before = _digests(out)
    assert "pretrain/best.pt" in before and "config.yaml" in before
    capsys.readouterr()
    assert train_main(_args(folder_root, out, "--stage", "pretrain", "pretrain.lr=0.5")) == 2
    err = capsys.readouterr().err
    assert "already holds a pretrain run" in err and "--resume" in err and "--overwrite" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert _digests(out) == before


def test_overwrite_moves_the_earlier_run_aside(folder_root, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train_main(_args(folder_root, out, "--stage", "pretrain")) == 0
    first = _digests(os.path.join(out, "pretrain"))
    assert train_main(_args(folder_root, out, "--stage", "pretrain", "--overwrite", "pretrain.lr=0.5")) == 0
    assert "moved aside to" in capsys.readouterr().out
    assert _digests(os.path.join(out, "pretrain.previous-1")) == first
    assert os.path.isfile(os.path.join(out, "pretrain", "best.pt"))
    # the run's config.yaml describes the run now in the folder
    assert "lr: 0.5" in open(os.path.join(out, "config.yaml")).read()
    assert len([e for e in os.listdir(os.path.join(out, "pretrain", "tb")) if e.startswith("events")]) == 1


def test_out_and_resume_alone_continue_the_run_with_its_config(folder_root, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train_main(_args(folder_root, out, "--stage", "meta", "--max-steps", "3")) == 0
    capsys.readouterr()
    # no --config, no --data-root: both come from OUT/config.yaml (here the step limit is lifted)
    assert train_main(["--out", out, "run.max_steps=0", "--resume"]) == 0
    printed = capsys.readouterr().out
    assert f"resuming the run in {out} with its config" in printed
    assert os.path.isfile(os.path.join(out, "meta", "done.json"))
    assert train_main(["--out", out, "--resume", "--overwrite"]) == 2
