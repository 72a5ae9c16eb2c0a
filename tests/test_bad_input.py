"""Every bad input a user can give gets one line naming the culprit and exit code 2.

A matrix of bad configs, options, checkpoints, manifests and data replayed through the
train.py / eval.py entry points (in-process with file-descriptor capture, plus a few as
real subprocesses) and through the ``fewshot.emd`` API for every registered solver: no
traceback, nothing written that looks like a result, and the error as early as it can be
known (solver options when the model is built, before any training step).
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import make_csv_layout, make_split_folders
from fewshot import emd
from fewshot.cli import eval_main, train_main
from fewshot.errors import ConfigError
from fewshot._io import load_checkpoint, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "protonet_demo.yaml")


def _train_args(data, out, *extra):
    return ["--config", CONFIG, "--data-root", data, "--out", out, "--device", "cpu", "--way", "3",
            "--query", "2", "data.image_size=16", "meta.episodes_per_epoch=2", "meta.epochs=1",
            "meta.val_episodes=2", "eval.n_query=2", "run.progress=false",
            "model.backbone_options.hidden=8", *extra]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny data, a trained ProtoNet and DeepEMD checkpoint and a valid manifest."""
    base = tmp_path_factory.mktemp("bad_input")
    data = make_split_folders(str(base / "data"), per_class=6)
    runs = {}
    for method in ("protonet", "deepemd"):
        out = str(base / method)
        assert train_main(_train_args(data, out, "--max-steps", "1", f"model.method={method}")) == 0
        runs[method] = os.path.join(out, "meta", "best.pt")
    manifest = str(base / "episodes.json")
    assert eval_main(["--checkpoint", runs["protonet"], "--episodes", "2", "--split", "test",
                      "--result", str(base / "ok.json"), "--write-episodes", manifest]) == 0
    return {"base": base, "data": data, "manifest": json.load(open(manifest)), **runs}


def _expect_one_line(capfd, code, culprit):
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert culprit in lines[0], (culprit, lines[0])


# ------------------------------------------------------------------ train.py
def _bad_checkpoint(world, kind):
    path = str(world["base"] / f"{kind}.pt")
    if kind == "empty":
        open(path, "wb").close()
    elif kind == "text":
        with open(path, "w") as f:
            f.write("these are not weights\n")
    else:
        state = load_checkpoint(world["protonet"])
        if kind == "no_config":
            del state["config"]
        elif kind == "nan":
            key = next(k for k, v in state["model"].items() if v.is_floating_point())
            state["model"][key] = torch.full_like(state["model"][key], float("nan"))
        elif kind == "shape":
            key = next(k for k, v in state["model"].items() if v.dim() == 4)
            state["model"][key] = torch.zeros(3, 3)
        save_checkpoint(path, state)
    return path


def _class_tree(world, lengths):
    """A class tree over the six training classes of ``world`` with the given edge lengths."""
    path = str(world["base"] / f"tree_{abs(hash(tuple(lengths))) % 10 ** 8}.json")
    json.dump({"nodes": ["root"] + [f"train_class{c}" for c in range(6)], "parents": [-1] + [0] * 6,
               "lengths": lengths}, open(path, "w"))
    return path


TRAIN_CASES = [  # (id, extra arguments (callable of world), culprit in the message)
    ("backbone_width_negative", lambda w: ["model.backbone_options.hidden=-4"], "hidden must be an integer >= 1"),
    ("backbone_pools_more_blocks_than_it_has", lambda w: ["model.backbone_options.pool_blocks=9"],
     "pool_blocks must be in [0, num_blocks=4]"),
    ("backbone_too_deep_for_the_images", lambda w: ["model.backbone_options.num_blocks=6",
                                                    "model.backbone_options.pool_blocks=6"],
     "cannot take 3 x 16 x 16 images"),
    ("backbone_in_channels_mismatch", lambda w: ["model.backbone_options.in_channels=1"],
     "cannot take 3 x 16 x 16 images"),
    ("resnet12_channels_empty", lambda w: ["model.backbone=resnet12", "model.backbone_options=null",
                                           "model.backbone_options.channels=[]"], "channels must be a list"),
    ("gpu_augment_of_grayscale", lambda w: ["data.transform=grayscale", "data.augment=true", "data.gpu_augment=true"],
     "data.gpu_augment: applies to the training split of transform 'deepemd'"),
    ("pyramid_level_zero", lambda w: ["model.method=deepemd", "model.options.pyramid=[0]"],
     "model.options.pyramid: expected grid sizes >= 1"),
    ("class_tree_without_weight", lambda w: ["pretrain.class_tree=" + _class_tree(w, [0] + [1] * 6)],
     "pretrain.emd_loss_weight is 0"),
    ("emd_loss_weight_without_tree", lambda w: ["pretrain.emd_loss_weight=0.5"], "needs pretrain.class_tree"),
    ("emd_loss_rho_below_one", lambda w: ["pretrain.emd_loss_rho=0.5"], "pretrain.emd_loss_rho"),
    ("class_tree_negative_length", lambda w: ["--stage", "pretrain", "pretrain.batch_size=8", "pretrain.emd_loss_weight=0.5",
                                              "pretrain.class_tree=" + _class_tree(w, [0, 1, 1, -2, 1, 1, 1])],
     "edge length of node 'train_class2'"),
    ("class_tree_nan_length", lambda w: ["--stage", "pretrain", "pretrain.batch_size=8", "pretrain.emd_loss_weight=0.5",
                                         "pretrain.class_tree=" + _class_tree(w, [0, 1, 1, 1, 1, 1, "NaN"])],
     "finite number >= 0"),
    ("sinkhorn_epsilon_negative", lambda w: ["model.method=deepemd", "model.options.solver=sinkhorn",
                                             "model.options.solver_options.epsilon=-1"],
     "model.options.solver_options.epsilon"),
    ("sinkhorn_epsilon_nan", lambda w: ["model.method=deepemd", "model.options.solver=sinkhorn",
                                        "model.options.solver_options.epsilon=.nan"],
     "epsilon"),
    ("sinkhorn_max_iter_zero", lambda w: ["model.method=deepemd", "model.options.solver=sinkhorn",
                                          "model.options.solver_options.max_iter=0"],
     "model.options.solver_options.max_iter"),
    ("qpth_l2_negative", lambda w: ["model.method=deepemd", "model.options.eval_solver=qpth",
                                    "model.options.eval_solver_options.l2_strength=-1"],
     "model.options.eval_solver_options.l2_strength"),
    ("exact_engine_unknown", lambda w: ["model.method=deepemd", "model.options.solver_options.engine=gpu"],
     "model.options.solver_options.engine"),
    ("solver_option_unknown", lambda w: ["model.method=deepemd", "model.options.solver_options.epsilon=1"],
     "'epsilon'"),
    ("learned_checkpoint_missing", lambda w: ["model.method=deepemd", "model.options.solver=learned",
                                              "model.options.solver_options.checkpoint=/nowhere.pt"],
     "/nowhere.pt"),
    ("temperature_text", lambda w: ["model.method=deepemd", "model.options.temperature=abc"],
     "model.options.temperature"),
    ("sfc_lr_negative", lambda w: ["model.method=deepemd", "model.options.sfc_lr=-0.1"], "sfc_lr"),
    ("metric_unknown", lambda w: ["model.method=deepemd", "model.options.metric=l1"], "metric"),
    ("max_steps_negative", lambda w: ["--max-steps", "-1"], "--max-steps: must be >= 1"),
    ("meta_epochs_zero", lambda w: ["meta.epochs=0"], "meta.epochs"),
    ("val_episodes_zero", lambda w: ["meta.val_episodes=0"], "meta.val_episodes"),
    ("meta_lr_negative", lambda w: ["meta.lr=-1"], "meta.lr"),
    ("workers_negative", lambda w: ["data.workers=-1"], "data.workers"),
    ("image_size_tiny", lambda w: ["data.image_size=8"], "data.image_size"),
    ("out_is_a_file", lambda w: ["--out", str(w["base"] / "ok.json")], "ok.json"),
    ("resume_empty", lambda w: ["--resume", _bad_checkpoint(w, "empty")], "empty"),
    ("resume_text", lambda w: ["--resume", _bad_checkpoint(w, "text")], "not a file written by torch.save"),
    ("resume_other_backbone", lambda w: ["model.backbone=resnet12", "model.backbone_options=null",
                                         "--resume", w["protonet"].replace("best", "last")],
     "model.backbone: checkpoint 'conv4', this run 'resnet12'"),
    ("resume_other_method", lambda w: ["model.method=deepemd", "--resume", w["protonet"].replace("best", "last")],
     "model.method: checkpoint 'protonet', this run 'deepemd'"),
    ("resume_other_way", lambda w: ["--way", "4", "--resume", w["protonet"].replace("best", "last")],
     "episode.n_way: checkpoint 3, this run 4"),
    ("resume_other_lr", lambda w: ["meta.lr=0.5", "--resume", w["protonet"].replace("best", "last")],
     "meta.lr"),
]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_bad_input(world, tmp_path, capfd, case):
    _, extra, culprit = case
    out = str(tmp_path / "run")
    capfd.readouterr()
    code = train_main(_train_args(world["data"], out, *extra(world)))
    _expect_one_line(capfd, code, culprit)
    assert not os.path.exists(os.path.join(out, "config.yaml"))          # nothing written
    for stage in ("pretrain", "meta"):
        assert not os.path.exists(os.path.join(out, stage))


def test_split_file_listing_an_image_twice(tmp_path, capfd):
    root = make_csv_layout(str(tmp_path / "mini"), per_class=6)
    split = os.path.join(root, "split", "train.csv")
    rows = open(split).read().splitlines()
    rows.append(rows[1].split(",")[0] + "," + rows[-1].split(",")[1])    # the same image, another class
    open(split, "w").write("\n".join(rows) + "\n")
    code = train_main(_train_args(root, str(tmp_path / "run"), "data.name=miniimagenet"))
    _expect_one_line(capfd, code, "listed again")


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_is_one_line_also_from_a_worker(tmp_path, capfd, workers):
    root = make_split_folders(str(tmp_path / "data"), per_class=6)
    folder = os.path.join(root, "train", "train_class0")
    for name in os.listdir(folder):
        open(os.path.join(folder, name), "wb").write(b"not a png")
    code = train_main(_train_args(root, str(tmp_path / "run"), f"data.workers={workers}"))
    _expect_one_line(capfd, code, "train_class0")


# ------------------------------------------------------------------ eval.py
def _manifest(world, change):
    doc = json.loads(json.dumps(world["manifest"]))
    change(doc)
    path = str(world["base"] / f"manifest_{abs(hash(json.dumps(doc))) % 10 ** 8}.json")
    json.dump(doc, open(path, "w"))
    return path


def _reuse_support_as_query(doc):
    doc["episodes"][0]["query"][0] = doc["episodes"][0]["support"][0]


def _one_way(doc):
    doc["n_way"] = 1
    for ep in doc["episodes"]:
        ep["classes"] = ep["classes"][:1]


EVAL_CASES = [
    ("episodes_not_a_list", lambda w: ["--episodes-file", _manifest(w, lambda d: d.update(episodes=5))],
     "'episodes'"),
    ("episodes_empty", lambda w: ["--episodes-file", _manifest(w, lambda d: d.update(episodes=[]))],
     "'episodes'"),
    ("classes_missing", lambda w: ["--episodes-file",
                                   _manifest(w, lambda d: d["episodes"][1].pop("classes"))], "episode 1"),
    ("n_shot_string", lambda w: ["--episodes-file", _manifest(w, lambda d: d.update(n_shot="1"))],
     "n_shot"),
    ("n_query_mismatch", lambda w: ["--episodes-file", _manifest(w, lambda d: d.update(n_query=3))],
     "'query' lists"),
    ("support_reused_as_query", lambda w: ["--episodes-file", _manifest(w, _reuse_support_as_query)],
     "both a support and a query image"),
    ("one_way", lambda w: ["--episodes-file", _manifest(w, _one_way)], "n_way"),
    ("episodes_negative", lambda w: ["--episodes", "-3"], "-3"),
    ("checkpoint_empty", lambda w: ["--checkpoint", _bad_checkpoint(w, "empty")], "empty"),
    ("checkpoint_text", lambda w: ["--checkpoint", _bad_checkpoint(w, "text")], "torch.save"),
    ("checkpoint_without_config", lambda w: ["--checkpoint", _bad_checkpoint(w, "no_config")], "config"),
    ("checkpoint_nan_weights", lambda w: ["--checkpoint", _bad_checkpoint(w, "nan")], "NaN"),
    ("checkpoint_misshaped_weights", lambda w: ["--checkpoint", _bad_checkpoint(w, "shape")], "shape"),
    ("shot_contradicts_manifest", lambda w: ["--episodes-file", _manifest(w, lambda d: None), "--shot", "5"],
     "--shot 5 contradicts --episodes-file"),
    ("way_contradicts_manifest", lambda w: ["--episodes-file", _manifest(w, lambda d: None), "--way", "2"],
     "--way 2 contradicts"),
    ("query_contradicts_manifest", lambda w: ["--episodes-file", _manifest(w, lambda d: None), "--query", "9"],
     "--query 9 contradicts"),
    ("write_episodes_under_a_file", lambda w: ["--write-episodes", str(w["base"] / "ok.json" / "m.json")],
     "--write-episodes"),
    ("result_is_a_folder", lambda w: ["--result", str(w["base"])], "is a folder"),
    ("episodes_zero", lambda w: ["--episodes", "0"], "--episodes: must be >= 1, got 0"),
    ("eval_solver_option", lambda w: ["--checkpoint", w["deepemd"], "model.options.eval_solver=sinkhorn",
                                      "model.options.eval_solver_options.tol=0"],
     "model.options.eval_solver_options.tol"),
]


@pytest.mark.parametrize("case", EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_eval_bad_input(world, tmp_path, capfd, case):
    _, extra, culprit = case
    args = extra(world)
    if "--checkpoint" not in args:
        args = ["--checkpoint", world["protonet"], *args]
    result = str(tmp_path / "result.json")
    if "--result" in args:
        result = args[args.index("--result") + 1]
        args = args[:args.index("--result")] + args[args.index("--result") + 2:]
    capfd.readouterr()
    code = eval_main([*args, "--data-root", world["data"], "--split", "test", "--result", result])
    _expect_one_line(capfd, code, culprit)
    assert not os.path.isfile(result)


@pytest.mark.parametrize("script,args,culprit", [
    ("train.py", ["model.method=deepemd", "model.options.solver=sinkhorn",
                  "model.options.solver_options.epsilon=-1"], "epsilon"),
    ("eval.py", ["--episodes", "-3"], "-3"),
])
def test_entry_points_as_subprocesses(world, tmp_path, script, args, culprit):
    if script == "train.py":
        argv = _train_args(world["data"], str(tmp_path / "run"), *args)
    else:
        argv = ["--checkpoint", world["protonet"], "--data-root", world["data"], *args]
    p = subprocess.run([sys.executable, os.path.join(ROOT, script), *argv], capture_output=True,
                       text=True, cwd=ROOT, timeout=300)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(lines) == 1 and culprit in lines[0], p.stderr


# ------------------------------------------------------------------ fewshot.emd API
def _bad_values(option: emd.Option):
    """Values ``option`` must reject: wrong types, non-finite numbers, just out of range."""
    if option.kind is object:
        return []
    if option.kind is bool:
        return ["yes", 1]
    if option.kind is str:
        return [3] + (["no-such-choice"] if option.choices else [])
    values = ["1", True, None] if option.default is not None else ["1", True]
    if option.kind is float:
        values += [math.nan, math.inf]
    else:
        values += [1.5]
    if option.low is not None:
        values.append(option.low if option.low_open else option.low - 1)
    if option.high is not None:
        values.append(option.high if option.high_open else option.high + 1)
    return values


API_CASES = [(name, key, value) for name in emd.solvers() for key, opt in emd.spec(name).options.items()
             for value in _bad_values(opt)]


@pytest.mark.parametrize("name,key,value", API_CASES,
                         ids=[f"{n}-{k}-{v!r}" for n, k, v in API_CASES])
def test_solver_options_are_checked_at_construction(name, key, value):
    with pytest.raises(ConfigError, match=rf"^{name}\.{key}: expected"):
        emd.make_solver(name, {key: value})


@pytest.mark.parametrize("name,options", [
    ("sinkhorn", {"epsilon": -1}), ("sinkhorn", {"epsilon": math.nan}), ("sinkhorn", {"max_iter": 0}),
    ("qpth", {"l2_strength": -1}), ("exact", {"engine": "gpu"}), ("tree", {"rho": 0.5}),
    ("chain", {"n_projections": 0}), ("cvxpylayers", {"regularization": -1}),
    ("learned", {"checkpoint": "/nowhere.pt"}), ("learned", {"n_sinkhorn": 0}),
    ("learned", {"sharpness": 0.0}), ("learned", {"sharpness": math.inf}), ("learned", {"gradient": "implicit"}),
])
def test_solve_rejects_invalid_options_before_solving(name, options):
    """The examples of the issue: each a ConfigError naming the option, not a wrong answer."""
    cost = torch.rand(2, 3, 3)
    a = b = torch.ones(2, 3)
    with pytest.raises(ConfigError, match=list(options)[0]):
        emd.solve(cost, a, b, solver=name, **options)


@pytest.mark.parametrize("name", emd.solvers())
def test_every_solver_rejects_unknown_options_and_bad_tensors(name):
    with pytest.raises(ConfigError, match="unknown option"):
        emd.make_solver(name, {"no_such_option": 1})
    solver = emd.make_solver(name)
    a = b = torch.ones(2, 3)
    for cost, culprit in ((torch.full((2, 3, 3), math.nan), "cost"), (torch.rand(2, 3, 4), "b")):
        with pytest.raises(emd.EMDInputError, match=culprit):
            solver(cost, a, b)


def test_sinkhorn_that_cannot_converge_is_an_error_not_a_wrong_answer():
    cost = torch.rand(4, 5, 5, dtype=torch.float64) * 1e6
    a = b = torch.ones(4, 5, dtype=torch.float64)
    with pytest.raises(emd.EMDSolverError, match="did not converge"):
        emd.solve(cost, a, b, solver="sinkhorn", max_iter=50)
    r = emd.solve(cost, a, b, solver="sinkhorn", max_iter=50, on_unconverged="ignore")
    assert not bool(r.info["converged"].all())


def test_built_solver_declares_what_it_needs_and_how_it_differentiates():
    for name in emd.solvers():
        s = emd.make_solver(name)
        assert s.differentiation and s.name == name
    assert emd.make_solver("chain").needs_points and emd.make_solver("sinkhorn").warm_starts
    assert not emd.make_solver("qpth").warm_starts and emd.make_solver("exact").envelope
    with pytest.raises(emd.EMDInputError, match="does not warm-start"):
        emd.make_solver("qpth")(torch.rand(1, 2, 2), torch.ones(1, 2), torch.ones(1, 2),
                                init=(torch.zeros(1, 2), torch.zeros(1, 2)))


# ------------------------------------------------------------------ config files, flags, images, half types
@pytest.mark.parametrize("files, culprit", [
    ({"c.yaml": "meta:\n  lr: 0.1\nmeta:\n  epochs: 2\n"}, "key 'meta' is given twice"),
    ({"c.yaml": "meta:\n  lr: 0.1\n  lr: 0.2\n"}, "key 'lr' is given twice"),
    ({"c.yaml": "base: d.yaml\n", "d.yaml": "base: c.yaml\n"}, "comes back to itself (c.yaml -> d.yaml -> c.yaml)"),
    ({"c.yaml": "base: c.yaml\n"}, "comes back to itself"),
    ({"c.yaml": "base: [d.yaml]\n", "d.yaml": "meta: {}\n"}, "'base' must be one file name"),
])
def test_config_file_mistakes_are_one_line(tmp_path, capfd, files, culprit):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    code = train_main(["--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")])
    _expect_one_line(capfd, code, culprit)
    assert not os.path.exists(tmp_path / "run")


def test_config_with_a_utf8_bom_loads(tmp_path):
    from fewshot.config import load_config
    (tmp_path / "c.yaml").write_bytes("\ufeffmeta:\n  lr: 0.25\n".encode("utf-8"))
    assert load_config(str(tmp_path / "c.yaml")).meta.lr == 0.25


@pytest.mark.parametrize("main, args, culprit", [
    (train_main, ["--stage", "bogus"], "argument --stage: invalid choice: 'bogus'"),
    (train_main, ["--way", "three"], "argument --way: invalid int value: 'three'"),
    (train_main, ["--seed", str(2 ** 40)], "run.seed: expected an integer >= 0 and <= 2147483647"),
    (train_main, ["--seed", "-1"], "run.seed"),
    (eval_main, ["--checkpoint", "x.pt", "--episodes", "ten"], "argument --episodes: invalid int value"),
    (eval_main, [], "the following arguments are required: --checkpoint"),
])
def test_flag_mistakes_are_one_line_not_a_usage_block(world, tmp_path, capfd, main, args, culprit):
    extra = ["--data-root", world["data"], "--out", str(tmp_path / "run")] if main is train_main else []
    code = main([*args, *extra])
    _expect_one_line(capfd, code, culprit)
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("args, culprit", [
    (["--out", "fig.txt"], "fig.txt' is not a picture file matplotlib writes"),
    (["--out", "fig.png", "--top-flows", "-1"], "--top-flows: expected a count >= 0"),
])
def test_visualize_checks_its_output_before_any_work(world, tmp_path, capfd, args, culprit):
    from fewshot.cli import visualize_main
    code = visualize_main(["--checkpoint", world["deepemd"], "--data-root", world["data"], "--split", "test",
                           *[str(tmp_path / a) if a.startswith("fig") else a for a in args]])
    _expect_one_line(capfd, code, culprit)
    assert not list(tmp_path.iterdir())


def test_sixteen_bit_png_keeps_its_values_and_a_bomb_is_refused(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image
    from fewshot.data._image import load_image
    from fewshot.errors import DataError
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)     # 0 .. 65472
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels = np.asarray(load_image(str(tmp_path / "deep.png")))
    assert pixels.shape == (32, 32, 3) and pixels[0, 0, 0] == 0 and pixels[-1, -1, 0] == 255
    np.testing.assert_allclose(pixels[..., 0], ramp.astype(float) * 255 / 65535, atol=0.5)   # not clipped to white
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)                   # PIL's public limit
    with pytest.raises(DataError, match="too large to decode safely"):
        load_image(str(tmp_path / "deep.png"))


def test_split_csv_with_a_utf8_bom_is_read(tmp_path):
    from fewshot.data.datasets import build_dataset
    root = make_csv_layout(str(tmp_path / "mini"), per_class=3)
    split = os.path.join(root, "split", "train.csv")
    text = open(split).read()
    open(split, "wb").write(("\ufeff" + text).encode("utf-8"))
    assert len(build_dataset("miniimagenet", root, "train")) == 18


def test_half_precision_problems():
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(3, 5, 5, generator=g).half()
    a = torch.full((3, 5), 0.2).half()
    with pytest.raises(emd.EMDInputError, match="total mass 100000 overflows torch.float16"):
        emd.solve(cost, a * 100000, a * 100000, solver="exact")
    r = emd.solve(cost, a, a, solver="sinkhorn", epsilon=0.05)       # tol 1e-3: reached in float32
    ref = emd.solve(cost.float(), a.float(), a.float(), solver="sinkhorn", epsilon=0.05)
    assert r.value.dtype == torch.float16 and r.info["computed_in"] == "float32"
    torch.testing.assert_close(r.value.float(), ref.value, rtol=1e-3, atol=0)


def test_a_second_run_into_the_same_out_is_refused(world, tmp_path, capfd):
    """While one run holds --out, another is refused before it reads or writes anything there;
    once the holder dies (kill -9), the folder is free again."""
    out = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from fewshot._io import lock_folder; "
                               "lock_folder(sys.argv[1]); print('held', flush=True); time.sleep(120)", out],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        open(os.path.join(out, ".half.pt.x.tmp"), "w").close()            # the other run's temporary
        code = train_main(_train_args(world["data"], out, "--max-steps", "1"))
        _expect_one_line(capfd, code, f"--out {out!r} is in use by another run (process {holder.pid})")
        assert os.path.exists(os.path.join(out, ".half.pt.x.tmp")) and not os.path.exists(os.path.join(out, "meta"))
    finally:
        holder.kill()
        holder.wait()
    assert train_main(_train_args(world["data"], out, "--max-steps", "1")) == 0
