"""End-to-end stage runs on a tiny generated dataset: checkpoints, TensorBoard, resume, eval."""
import json
import os

import pytest
import torch

from fewshot.cli import eval_main, train_main
from fewshot.engine import load_checkpoint


def _args(root, out, *extra):
    return ["--config", os.path.join(os.path.dirname(__file__), "..", "configs", "protonet_demo.yaml"),
            "--data-root", root, "--out", out, "--device", "cpu", "--way", "3", "--query", "2",
            "data.image_size=16", "meta.episodes_per_epoch=4", "meta.epochs=2", "meta.val_episodes=3",
            "eval.n_query=2", "pretrain.batch_size=8", "pretrain.epochs=1", "pretrain.val_episodes=3",
            "run.progress=false", "run.log_every=1", "run.checkpoint_every=1", "model.backbone_options.hidden=8",
            *extra]


def test_pretrain_meta_eval_pipeline(folder_root, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train_main(_args(folder_root, out, "--stage", "pretrain")) == 0
    assert os.path.isfile(os.path.join(out, "pretrain", "best.pt"))
    assert os.path.isfile(os.path.join(out, "config.yaml"))
    events = os.listdir(os.path.join(out, "pretrain", "tb"))
    assert any(e.startswith("events.out.tfevents") for e in events)
    pre = os.path.join(out, "pretrain", "best.pt")
    assert train_main(_args(folder_root, out, "--stage", "meta", f"meta.pretrained={pre}")) == 0
    best = os.path.join(out, "meta", "best.pt")
    state = load_checkpoint(best)
    assert state["stage"] == "meta" and state["config"]["meta"]["pretrained"] == pre
    result_path = str(tmp_path / "result.json")
    manifest = str(tmp_path / "episodes.json")
    assert eval_main(["--checkpoint", best, "--episodes", "5", "--split", "test", "--result", result_path,
                      "--write-episodes", manifest]) == 0
    result = json.load(open(result_path))
    assert result["episodes"] == 5 and 0 <= result["accuracy"] <= 100 and result["n_way"] == 3
    printed = capsys.readouterr().out
    assert "+-" in printed
    # the same episodes from the manifest give the same accuracy
    again = str(tmp_path / "again.json")
    assert eval_main(["--checkpoint", best, "--episodes-file", manifest, "--result", again]) == 0
    assert json.load(open(again))["accuracy"] == pytest.approx(result["accuracy"])
    # channels-last memory format changes the layout, not the numbers
    cl = str(tmp_path / "channels_last.json")
    assert eval_main(["--checkpoint", best, "--episodes-file", manifest, "--result", cl,
                      "run.channels_last=true"]) == 0
    assert json.load(open(cl))["accuracy"] == pytest.approx(result["accuracy"])


def test_meta_training_episodes_may_have_more_classes_than_validation(folder_root, tmp_path, capsys):
    """meta.n_way: 6-way training episodes; validation, the checkpoint's task and evaluation
    stay episode.n_way (3) way; more classes than the train split has is a one-line error."""
    out = str(tmp_path / "wide")
    assert train_main(_args(folder_root, out, "--max-steps", "2", "meta.n_way=6")) == 0
    printed = capsys.readouterr().out
    assert "[meta] 6-way 1-shot 2-query" in printed and "3-way 1-shot episodes of val" in printed
    best = os.path.join(out, "meta", "best.pt")
    config = load_checkpoint(best)["config"]
    assert config["meta"]["n_way"] == 6 and config["episode"]["n_way"] == 3
    result = str(tmp_path / "r.json")
    assert eval_main(["--checkpoint", best, "--episodes", "2", "--result", result]) == 0
    assert json.load(open(result))["n_way"] == 3
    assert train_main(_args(folder_root, str(tmp_path / "too_wide"), "--max-steps", "1", "meta.n_way=7")) == 2
    assert "meta-training episodes (meta.n_way 7): " in capsys.readouterr().err
    assert train_main(_args(folder_root, str(tmp_path / "one"), "meta.n_way=1")) == 2
    assert "meta.n_way" in capsys.readouterr().err


def test_resume_continues_exactly(folder_root, tmp_path):
    straight = str(tmp_path / "straight")
    assert train_main(_args(folder_root, straight, "--max-steps", "6")) == 0
    broken = str(tmp_path / "broken")
    assert train_main(_args(folder_root, broken, "--max-steps", "3")) == 0  # "killed" after 3 steps
    assert load_checkpoint(os.path.join(broken, "meta", "last.pt"))["step"] == 3
    assert train_main(_args(folder_root, broken, "--max-steps", "6", "--resume")) == 0
    a = load_checkpoint(os.path.join(straight, "meta", "last.pt"))
    b = load_checkpoint(os.path.join(broken, "meta", "last.pt"))
    assert a["step"] == b["step"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def test_cli_errors_are_one_paragraph(tmp_path, capsys):
    code = train_main(["--data-root", str(tmp_path / "nowhere"), "--device", "cpu",
                       "--out", str(tmp_path / "o"), "run.progress=false"])
    err = capsys.readouterr().err
    assert code == 2 and "nowhere" in err and "Traceback" not in err and "--data-root" in err
    assert train_main(["meta.nope=1"]) == 2
    assert "'nope'" in capsys.readouterr().err
    assert eval_main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert train_main(["--resume", "run.seed=3"]) == 2      # an override swallowed by --resume
    assert "put overrides before --resume" in capsys.readouterr().err


@pytest.mark.parametrize("solver", ["exact", "sinkhorn", "qpth", "cvxpylayers", "tree", "chain", "learned"])
def test_deepemd_trains_with_each_solver_by_one_key(folder_root, tmp_path, solver):
    out = str(tmp_path / solver)
    extra = []
    if solver == "learned":                       # its options name a trained matcher checkpoint
        from fewshot.emd import MatchingTransformer
        from fewshot.emd._learned import save_model
        save_model(MatchingTransformer(dim=16, layers=1), str(tmp_path / "matcher.pt"))
        extra = [f"model.options.{k}_options.checkpoint={tmp_path / 'matcher.pt'}"
                 for k in ("solver", "eval_solver")]
    args = _args(folder_root, out, "--max-steps", "2", "model.method=deepemd", "data.image_size=32",
                 "--query", "1", f"model.options.solver={solver}", f"model.options.eval_solver={solver}",
                 "meta.val_episodes=2", "eval.n_query=1", *extra)
    assert train_main(args) == 0
    result = str(tmp_path / "r.json")
    assert eval_main(["--checkpoint", os.path.join(out, "meta", "best.pt"), "--episodes", "2",
                      "--result", result]) == 0
    got = json.load(open(result))
    assert got["solver"] == solver and got["eval_solver"] == solver and got["method"] == "deepemd"


def test_pretrain_with_ce_plus_tree_emd_loss(folder_root, tmp_path, write_json):
    classes = [f"train_class{c}" for c in range(6)]
    tree = write_json("tree.json", {"nodes": ["root", "left", "right"] + classes,
                                    "parents": [-1, 0, 0, 1, 1, 1, 2, 2, 2]})
    out = str(tmp_path / "run")
    assert train_main(_args(folder_root, out, "--stage", "pretrain", "model.method=protonet",
                            f"pretrain.class_tree={tree}", "pretrain.emd_loss_weight=0.5")) == 0
    assert os.path.isfile(os.path.join(out, "pretrain", "best.pt"))
    bad = write_json("bad.json", {"nodes": ["root"], "parents": [-1]})
    assert train_main(_args(folder_root, str(tmp_path / "r2"), "--stage", "pretrain",
                            f"pretrain.class_tree={bad}", "pretrain.emd_loss_weight=0.5")) == 2


def _first_train_loss(out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(os.path.join(out, "pretrain", "tb"))
    events.Reload()
    return events.Scalars("train/loss")[0].value


def test_dense_classification_loss_is_the_cell_cross_entropy(folder_root, tmp_path):
    """pretrain.dense_weight w adds w x the cross-entropy of every feature-map cell: at 16 px
    Conv-4 leaves one 1 x 1 cell, whose logits are the pooled ones, so the first step's loss
    is exactly (1 + w) x the plain one (same seed, same batch, same initial weights)."""
    plain, dense = str(tmp_path / "plain"), str(tmp_path / "dense")
    common = ("--stage", "pretrain", "model.method=protonet", "--max-steps", "1")
    assert train_main(_args(folder_root, plain, *common)) == 0
    assert train_main(_args(folder_root, dense, *common, "pretrain.dense_weight=0.5")) == 0
    assert _first_train_loss(dense) == pytest.approx(1.5 * _first_train_loss(plain), rel=1e-5)
    # at 32 px the map has 2 x 2 cells of their own: a loss of its own, training still runs
    bigger = str(tmp_path / "bigger")
    assert train_main(_args(folder_root, bigger, *common, "data.image_size=32", "pretrain.dense_weight=0.5")) == 0
    assert os.path.isfile(os.path.join(bigger, "pretrain", "last.pt"))


def test_pretrain_init_starts_from_a_checkpoint_backbone_and_head(folder_root, tmp_path):
    first = str(tmp_path / "first")
    assert train_main(_args(folder_root, first, "--stage", "pretrain", "model.method=protonet",
                            "pretrain.head=cosine")) == 0
    start = load_checkpoint(os.path.join(first, "pretrain", "best.pt"))
    # a second phase with a vanishing learning rate ends where the first one did
    second = str(tmp_path / "second")
    assert train_main(_args(folder_root, second, "--stage", "pretrain", "model.method=protonet",
                            "pretrain.head=cosine", f"pretrain.init={first}/pretrain/best.pt",
                            "pretrain.lr=1e-12", "pretrain.weight_decay=0", "pretrain.dense_weight=1")) == 0
    end = load_checkpoint(os.path.join(second, "pretrain", "last.pt"))
    weights = [k for k in start["model"] if k.endswith("weight")]
    assert weights and all(torch.allclose(end["model"][k], start["model"][k], atol=1e-6) for k in weights)
    assert torch.allclose(end["extra"]["head"]["weight"], start["extra"]["head"]["weight"], atol=1e-6)
    # without it the same run starts from its own random weights
    fresh = str(tmp_path / "fresh")
    assert train_main(_args(folder_root, fresh, "--stage", "pretrain", "model.method=protonet",
                            "pretrain.head=cosine", "pretrain.lr=1e-12")) == 0
    other = load_checkpoint(os.path.join(fresh, "pretrain", "last.pt"))
    assert not torch.allclose(other["extra"]["head"]["weight"], start["extra"]["head"]["weight"], atol=1e-3)
    assert train_main(_args(folder_root, str(tmp_path / "bad"), "--stage", "pretrain",
                            "pretrain.init=/nowhere/best.pt")) == 2


def test_gpu_augment_trains_both_stages_and_resumes_exactly(folder_root, tmp_path):
    """data.gpu_augment: loaders hand over uint8 images, the trainer augments the batch on the
    device with a generator seeded by the step, so an interrupted run resumes bit for bit
    (here with channels-last convolutions on the CPU too)."""
    from fewshot.config import Config, from_dict
    from fewshot.engine.trainer import load_split
    flags = ("data.transform=deepemd", "data.augment=true", "data.gpu_augment=true",
             "run.channels_last=true")
    config = from_dict(Config, {"data": {"name": "folder", "root": folder_root, "image_size": 16,
                                         "gpu_augment": True}})
    image, _ = load_split(config, "train", train=True)[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 16, 16)
    assert load_split(config, "val", train=False)[0][0].dtype == torch.float32
    out = str(tmp_path / "pre")
    assert train_main(_args(folder_root, out, "--stage", "pretrain", *flags)) == 0
    straight = str(tmp_path / "straight")
    assert train_main(_args(folder_root, straight, "--max-steps", "4", *flags)) == 0
    broken = str(tmp_path / "broken")
    assert train_main(_args(folder_root, broken, "--max-steps", "2", *flags)) == 0
    assert train_main(_args(folder_root, broken, "--max-steps", "4", *flags, "--resume")) == 0
    a = load_checkpoint(os.path.join(straight, "meta", "last.pt"))
    b = load_checkpoint(os.path.join(broken, "meta", "last.pt"))
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def test_default_results_say_what_they_measured_and_never_replace_each_other(folder_root, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train_main(_args(folder_root, out, "--max-steps", "2", "model.method=deepemd")) == 0
    best = os.path.join(out, "meta", "best.pt")
    folder = os.path.dirname(best)
    before = set(os.listdir(folder))
    base = ["--checkpoint", best, "--episodes", "3", "--split", "val"]
    assert eval_main(base) == 0                                           # selection split, no seed
    printed = capsys.readouterr().out
    assert "episode seed 2: the checkpoint was selected on the val episodes of seed 1" in printed
    assert eval_main(base) == 0                                           # the same again: kept apart
    assert eval_main([*base, "--seed", "1", "model.options.eval_solver=sinkhorn",
                      "model.options.eval_solver_options.epsilon=0.1"]) == 0
    new = sorted(set(os.listdir(folder)) - before)
    assert new == ["eval_folder_val_3way1shot_deepemd-exact_3ep_seed2.json",
                   "eval_folder_val_3way1shot_deepemd-exact_3ep_seed2_2.json",
                   "eval_folder_val_3way1shot_deepemd-sinkhorn_3ep_seed1.json"], new
    first, second, third = (json.load(open(os.path.join(folder, n))) for n in new)
    assert first["seed"] == 2 and first["accuracy"] == second["accuracy"] and third["seed"] == 1
    assert third["config"]["model"]["options"]["eval_solver_options"] == {"epsilon": 0.1}
    assert "model.options.eval_solver_options.epsilon=0.1" in third["overrides"]
    assert "--seed" not in str(first["overrides"]) and first["config"]["eval"]["seed"] == 2
