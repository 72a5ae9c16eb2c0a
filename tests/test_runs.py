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


def test_a_data_pickle_never_runs_code(tmp_path):
    """A miniImageNet pickle whose object names a callable is refused before it is called."""
    import pickle

    import pytest

    from fewshot.data.datasets import build_dataset
    from fewshot.errors import FewShotError

    marker = tmp_path / "made_by_the_pickle"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))
    root = tmp_path / "mini"
    root.mkdir()
    with open(root / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump({"image_data": Evil(), "class_dict": {}}, f)
    with pytest.raises(FewShotError, match="names posix.mkdir|names os.mkdir"):
        build_dataset("miniimagenet_pickle", str(root), "train")
    assert not marker.exists()


def test_no_output_names_an_input_or_another_output(folder_root, tmp_path, capsys):
    """eval.py --result naming the checkpoint or the manifest it writes, and predict.py --explain
    naming a support photo, are refused before any work, the inputs unchanged."""
    from fewshot.cli import eval_main, predict_main
    out = str(tmp_path / "run")
    assert train_main(_args(folder_root, out, "--stage", "meta", "--max-steps", "1")) == 0
    best = os.path.join(out, "meta", "best.pt")
    digest = _digests(out)
    capsys.readouterr()
    manifest = str(tmp_path / "episodes.json")
    for extra, message in ((["--result", best], "names the input --checkpoint"),
                           (["--result", manifest, "--write-episodes", manifest], "give each output its own path"),
                           (["--result", os.path.join(out, "config.yaml")], "already exists")):
        assert eval_main(["--checkpoint", best, "--episodes", "2", "--split", "test", *extra]) == 2
        assert message in capsys.readouterr().err
    assert _digests(out) == digest and not os.path.exists(manifest)
    support = os.path.join(folder_root, "train")
    photo = os.path.join(support, sorted(os.listdir(support))[0])
    photo = os.path.join(photo, sorted(os.listdir(photo))[0])
    before = open(photo, "rb").read()
    test = os.path.join(folder_root, "test")
    query = os.path.join(test, sorted(os.listdir(test))[0])
    code = predict_main(["--checkpoint", best, "--support", support, "--query", query, "--explain", photo])
    assert code == 2 and "names the input --support" in capsys.readouterr().err
    assert open(photo, "rb").read() == before


def test_concurrent_writers_of_one_default_name_each_keep_their_result(tmp_path):
    from fewshot._io import write_new_text
    path = str(tmp_path / "eval_x.json")
    written = [write_new_text(path, f'{{"run": {i}}}', numbered=True) for i in range(3)]
    assert written == [path, str(tmp_path / "eval_x_2.json"), str(tmp_path / "eval_x_3.json")]
    assert [open(p).read() for p in written] == ['{"run": 0}', '{"run": 1}', '{"run": 2}']


def test_every_emd_entry_point_validates_like_solve():
    import pytest
    import torch

    from fewshot import emd
    from fewshot.emd import EMDInputError
    f64 = dict(dtype=torch.float64)
    x, y = torch.tensor([[0.0, 1.0]], **f64), torch.tensor([[0.5, 2.0]], **f64)
    a = torch.tensor([[1.0, 1.0]], **f64)
    for call, match in (
            (lambda: emd.chain_emd(x, y, a, torch.tensor([[2.0, 2.0]], **f64)), "chain_emd: a and b must have equal"),
            (lambda: emd.chain_emd(x, y, torch.tensor([[2.0, -0.5]], **f64), torch.tensor([[1.0, 0.5]], **f64)),
             "chain_emd: a has negative entries"),
            (lambda: emd.chain_emd(torch.tensor([[0.0, float("nan")]], **f64), y, a, a), "chain_emd: x contains NaN"),
            (lambda: emd.solve(torch.rand(1, 2, 2, **f64), a / 2, a / 2, solver="chain",
                               x=torch.tensor([[float("nan"), 0.0]], **f64), y=y), "x contains NaN"),
            (lambda: emd.tree_emd(torch.zeros(0, 3, **f64), torch.zeros(0, 3, **f64), [-1, 0, 0]), "holds no histogram")):
        with pytest.raises(EMDInputError, match=match):
            call()


def test_tree_solver_reports_its_plans_cost_an_upper_bound():
    """The tree value is the closed form on the spanning tree (it may fall below the optimum
    for a non-metric cost); info['plan_cost'] is <plan, cost>, never below POT's exact EMD."""
    import ot
    import torch

    from fewshot import emd
    cost = torch.tensor([[[0.9, 0.1], [0.1, 0.1]]], dtype=torch.float64)
    a = b = torch.tensor([[1.0, 0.001]], dtype=torch.float64)
    r = emd.solve(cost, a, b, solver="tree")
    exact = ot.emd2(a[0].numpy(), b[0].numpy(), cost[0].numpy())
    assert float(r.value) < exact                                     # documented: not a bound here
    torch.testing.assert_close(r.info["plan_cost"], (r.plan * cost).sum((1, 2)))
    g = torch.Generator().manual_seed(0)
    c = torch.rand(50, 5, 6, generator=g, dtype=torch.float64)
    p = torch.rand(50, 5, generator=g, dtype=torch.float64) + 0.1
    q = torch.rand(50, 6, generator=g, dtype=torch.float64) + 0.1
    q = q * (p.sum(1, keepdim=True) / q.sum(1, keepdim=True))
    r = emd.solve(c, p, q, solver="tree")
    exact = torch.tensor([ot.emd2(p[i].numpy(), q[i].numpy(), c[i].numpy()) for i in range(50)], dtype=torch.float64)
    assert bool((r.info["plan_cost"] >= exact - 1e-9).all())
    torch.testing.assert_close(r.plan.sum(2), p)
    torch.testing.assert_close(r.plan.sum(1), q)


def test_finetune_a_model_on_a_six_class_folder_validates_first(folder_root, tmp_path, capsys):
    """train.py --finetune MODEL: MODEL's own config, a step-0 validation (best.pt starts as MODEL),
    episode.n_way-way training episodes on a folder with 6 training classes."""
    from conftest import make_split_folders
    from fewshot.engine import load_checkpoint
    out = str(tmp_path / "run")
    assert train_main(_args(folder_root, out, "--stage", "meta", "--max-steps", "1", "meta.n_way=5")) == 0
    mine = make_split_folders(str(tmp_path / "mine"), splits=(("train", 6), ("val", 4)), per_class=5)
    capsys.readouterr()
    tuned = str(tmp_path / "tuned")
    assert train_main(["--finetune", os.path.join(out, "meta", "best.pt"), "--dataset", "folder", "--data-root", mine,
                       "--out", tuned, "meta.epochs=1", "meta.episodes_per_epoch=2", "meta.val_episodes=3"]) == 0
    printed = capsys.readouterr().out
    assert "fine-tuning" in printed and "validating the starting model (step 0)" in printed
    assert "[meta] epoch 0 step 0: val" in printed and "[meta] 3-way 1-shot" in printed
    config = load_checkpoint(os.path.join(tuned, "meta", "best.pt"))["config"]
    assert config["data"]["name"] == "folder" and config["meta"]["val_at_start"] is True
    from fewshot._io import save_checkpoint
    save_checkpoint(str(tmp_path / "pre.pt"), {**load_checkpoint(os.path.join(out, "meta", "best.pt")), "stage": "pretrain"})
    assert train_main(["--finetune", str(tmp_path / "pre.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "expected a meta-trained few-shot model" in capsys.readouterr().err


def test_data_files_that_are_wrong_say_what_is_wrong(cub_official_root, tmp_path):
    """A UTF-16 split file, a split's class list that is a string, a box that is NaN or not a
    number, a truncated checkpoint: one DataError / FewShotError that says which and why."""
    import pytest

    from conftest import make_csv_layout
    from fewshot._io import load_checkpoint
    from fewshot.api import resolve_checkpoint
    from fewshot.data.datasets import build_dataset
    from fewshot.errors import FewShotError
    root = make_csv_layout(str(tmp_path / "mini"))
    csv_path = os.path.join(root, "split", "train.csv")
    text = open(csv_path, encoding="utf-8").read()
    open(csv_path, "wb").write(text.encode("utf-16"))
    with pytest.raises(FewShotError, match="train.csv' is UTF-16 text; save it as UTF-8"):
        build_dataset("miniimagenet", root, "train")
    folders = tmp_path / "folders"
    (folders / "a").mkdir(parents=True)
    (tmp_path / "split.json").write_text('{"train": "abc"}')
    with pytest.raises(FewShotError, match="'train' must be a list of class folder names"):
        build_dataset("folder", str(folders), "train", split_file=str(tmp_path / "split.json"))
    boxes = os.path.join(cub_official_root, "bounding_boxes.txt")
    lines = open(boxes).read().splitlines()
    for bad, shown in (("nan nan 16 12", "'nan'"), ("1 2 three 4", "'three'")):
        open(boxes, "w").write("\n".join([lines[0].split()[0] + " " + bad] + lines[1:]) + "\n")
        with pytest.raises(FewShotError, match=f"line 1: field .* is {shown}; expected a finite number"):
            build_dataset("cub_official", cub_official_root, "train", bounding_box=True).image(0)
    state = open(resolve_checkpoint("conv4-cub"), "rb").read()
    for size in (10_000, 50_000, 300_000):
        (tmp_path / "cut.pt").write_bytes(state[:size])
        with pytest.raises(FewShotError, match="truncated or damaged"):
            load_checkpoint(str(tmp_path / "cut.pt"))
