"""The time-to-accuracy pieces of the CPU recipe: schedules, cosine head, progressive
resizing, the allocator setting, the Conv-4 layer order, and a smoke run of the recipe."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fewshot.config import load_config
from fewshot.data import BatchAugment
from fewshot.data.augment import resized_crops, sample_boxes
from fewshot.engine.schedules import lr_factor
from fewshot.errors import ConfigError
from fewshot.models import Conv4, CosineClassifier

from conftest import logged_losses, write_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_step_schedule_equals_torch_steplr():
    """The per-step 'step' schedule gives StepLR's per-epoch rates at every step."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    steplr = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.2)
    steps_per_epoch = 7
    for epoch in range(10):
        for j in range(steps_per_epoch):
            step = epoch * steps_per_epoch + j
            assert 0.1 * lr_factor(step, steps_per_epoch, 10, "step", 3, 0.2, 0.0) == pytest.approx(
                opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        steplr.step()


def test_cosine_schedule_with_warmup_golden_values():
    spe, epochs = 10, 5                                     # 50 steps, warm-up 1 epoch = 10 steps
    f = lambda s: lr_factor(s, spe, epochs, "cosine", 1, 1.0, 1.0)  # noqa: E731
    assert f(0) == pytest.approx(0.1 * 0.5 * (1 + math.cos(0)))      # (0+1)/10 of the cosine
    assert f(9) == pytest.approx(1.0 * 0.5 * (1 + math.cos(math.pi * 9 / 50)))
    assert f(25) == pytest.approx(0.5)                      # half-way: cos(pi/2) = 0
    assert f(49) == pytest.approx(0.5 * (1 + math.cos(math.pi * 49 / 50)))
    assert all(f(s) > f(s + 1) for s in range(10, 49))      # decays after the warm-up


def test_cosine_classifier_is_scaled_cosine():
    head = CosineClassifier(6, 4, scale=7.0)
    x = torch.randn(3, 6)
    expected = 7.0 * torch.stack([torch.stack([F.cosine_similarity(x[i], head.weight[c], dim=0)
                                               for c in range(4)]) for i in range(3)])
    torch.testing.assert_close(head(x), expected)
    torch.testing.assert_close(head(5 * x), expected)       # invariant to the feature norm


def test_conv4_pool_before_relu_is_the_textbook_block():
    """max-pool then ReLU == ReLU then max-pool: same outputs and same gradients."""
    torch.manual_seed(0)
    net = Conv4(hidden=8)
    textbook = nn.Sequential(*[m for block in range(4) for m in (
        net.encoder[4 * block], net.encoder[4 * block + 1], net.encoder[4 * block + 3],
        net.encoder[4 * block + 2])])
    assert isinstance(net.encoder[2], nn.MaxPool2d) and isinstance(textbook[2], nn.ReLU)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    net, textbook = net.double(), textbook.double()
    out = net.forward_features(x)
    grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
    ref = textbook(x)
    ref_grads = torch.autograd.grad(ref.square().sum(), list(textbook.parameters()))
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_batch_augment_output_size_uses_the_same_boxes():
    images = torch.randint(0, 256, (5, 3, 40, 40), dtype=torch.uint8)
    augment = BatchAugment(40, (0.5,) * 3, (0.25,) * 3, scale=(0.2, 1.0))
    small = augment(images, torch.Generator().manual_seed(3), size=24)
    assert small.shape == (5, 3, 24, 24)
    g = torch.Generator().manual_seed(3)
    boxes = sample_boxes(5, 40, 40, g, (0.2, 1.0))
    flip = torch.rand(5, generator=g) < 0.5
    expected = (resized_crops(images, boxes, 24, flip) - 127.5) / 63.75
    torch.testing.assert_close(small, expected)
    assert (boxes[:, 2] * boxes[:, 3] >= 0.2 * 1600 * 0.9).all()     # crop_scale respected


def test_recipe_config_is_valid():
    cfg = load_config(os.path.join(ROOT, "configs", "conv4_miniimagenet.yaml"))
    assert cfg.pretrain.size_schedule[-1][1] == cfg.data.image_size == 84


def _statm_resident_mb(code: str, env: dict) -> float:
    """Run code in a fresh interpreter that imports fewshot first; it prints RSS deltas."""
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


FREE_AND_MEASURE = """
import json, os
import fewshot
from fewshot import _malloc
fewshot.configure_allocator()         # what train.py / eval.py do first
import torch
page = os.sysconf("SC_PAGE_SIZE") / 2 ** 20
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
x = torch.ones(64 * 2 ** 20 // 4)          # 64 MB, touched
held = rss()
del x
print(json.dumps({"status": _malloc.status(), "kept_mb": rss() - held + 64}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_freed_tensor_memory_stays_mapped_in_the_entry_points():
    """fewshot.configure_allocator() (the entry points call it) makes glibc keep a freed 64 MB
    buffer mapped (no munmap + page faults at the next step); FEWSHOT_MALLOC=default or a
    user's MALLOC_* leaves glibc as is; importing fewshot alone changes nothing."""
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "FEWSHOT_MALLOC"}
    ours = _statm_resident_mb(FREE_AND_MEASURE, env)
    assert ours["status"].startswith("applied") and ours["kept_mb"] > 60
    default = _statm_resident_mb(FREE_AND_MEASURE, dict(env, FEWSHOT_MALLOC="default"))
    assert "FEWSHOT_MALLOC=default" in default["status"] and default["kept_mb"] < 8
    user = _statm_resident_mb(FREE_AND_MEASURE, dict(env, MALLOC_MMAP_MAX_="65536"))
    assert "MALLOC_MMAP_MAX_ is set" in user["status"]
    imported = _statm_resident_mb(FREE_AND_MEASURE.replace("fewshot.configure_allocator()", "pass"), env)
    assert imported["status"] == "not configured" and imported["kept_mb"] < 8


@pytest.mark.timeout(600)
def test_cpu_recipe_smoke(csv_root, tmp_path):
    """scripts/recipe_miniimagenet_cpu.sh in SMOKE mode on generated data: progressive
    resizing in pretraining, DeepEMD and ProtoNet meta-training, every evaluation on shared
    manifests, times and learning curves; a second invocation skips every step."""
    out = tmp_path / "run"
    env = dict(os.environ, SMOKE="1", PYTHON=sys.executable, AMP="1")
    cmd = ["bash", os.path.join(ROOT, "scripts", "recipe_miniimagenet_cpu.sh"), csv_root, str(out)]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    log = (out / "pretrain.log").read_text()
    assert "from epoch 0: training images of 16 px" in log and "from epoch 1: training images of 32 px" in log
    # AMP=1: both pretraining phases under bfloat16 autocast, meta-training in float32
    assert "mixed precision: bfloat16 autocast on cpu" in log
    assert "mixed precision: bfloat16 autocast on cpu" in (out / "pretrain_dense.log").read_text()
    assert "mixed precision" not in (out / "meta_deepemd.log").read_text()
    assert "pretraining bfloat16 autocast: 1 (AMP=1)" in (out / "times.txt").read_text()
    # the second pretraining phase starts from the first one; every method from the second
    first = str(out / "pretrain" / "best.pt")
    assert f"backbone and head initialised from {first}" in (out / "pretrain_dense.log").read_text()
    second = str(out / "dense" / "pretrain" / "best.pt")
    assert f"backbone initialised from {second}" in (out / "meta_deepemd.log").read_text()
    assert f"backbone initialised from {second}" in (out / "meta_protonet.log").read_text()
    assert json.load(open(out / "pretrained_simpleshot_l2n_val_1shot.json"))["checkpoint"] == second
    # meta.n_way: wider training episodes (4-way here) for both methods, 5-way validation and episodes
    for log_name in ("meta_deepemd.log", "meta_protonet.log"):
        text = (out / log_name).read_text()
        assert "[meta] 4-way 1-shot 2-query" in text and "5-way 1-shot episodes of val" in text
    manifest = json.load(open(out / "val_5way1shot_3.json"))
    for name in ("deepemd_val_1shot", "protonet_val_1shot", "pretrained_deepemd_val_1shot",
                 "pretrained_protonet_val_1shot", "pretrained_simpleshot_l2n_val_1shot"):
        result = json.load(open(out / f"{name}.json"))
        assert result["episodes"] == 3 and result["split"] == "val" and result["n_way"] == 5, name
    assert json.load(open(out / "protonet_val_1shot.json"))["episodes_file"].endswith("val_5way1shot_3.json")
    assert len(manifest["episodes"]) == 3
    shot5 = json.load(open(out / "deepemd_val_5shot.json"))
    assert shot5["n_shot"] == 5 and shot5["episodes"] == 2
    assert "total:" in (out / "times.txt").read_text()
    assert (out / "curves.png").stat().st_size > 1000
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.count("skip:") == 12
    # a stage that did not finish (best.pt written, done.json not) runs again, from its last.pt
    done = json.load(open(out / "meta" / "done.json"))
    assert done["stage"] == "meta" and done["epochs"] == 2 and done["steps"] == 4
    os.remove(out / "meta" / "done.json")
    third = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert third.returncode == 0 and third.stdout.count("skip:") == 11
    assert f"resumed from {out / 'meta' / 'last.pt'} at epoch 2, step 4" in (out / "meta_deepemd.log").read_text()
    assert json.load(open(out / "meta" / "done.json")) == done


def test_recipe_refuses_a_bad_amp_setting(tmp_path):
    env = dict(os.environ, SMOKE="1", PYTHON=sys.executable, AMP="yes")
    run = subprocess.run(["bash", os.path.join(ROOT, "scripts", "recipe_miniimagenet_cpu.sh"), str(tmp_path),
                          str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.strip() == "AMP must be auto, 1 or 0, not 'yes'"
    assert not (tmp_path / "run").exists()


def test_cpu_amp_is_bfloat16_autocast(folder_root, tmp_path):
    """run.amp=true on the CPU trains under bfloat16 autocast: the first step's loss is the
    float32 run's within bfloat16 rounding, but not equal to it (the setting is not ignored)."""
    from fewshot.cli import train_main

    def first_loss(amp):
        out = tmp_path / f"amp_{amp}"
        args = ["--config", os.path.join(ROOT, "configs", "protonet_demo.yaml"), "--data-root", folder_root,
                "--out", str(out), "--device", "cpu", "--stage", "pretrain", "data.image_size=16",
                "pretrain.epochs=1", "pretrain.batch_size=8", "pretrain.val_episodes=2", "eval.n_query=2",
                "run.progress=false", "run.log_every=1", "run.max_steps=1", "run.channels_last=true",
                f"run.amp={str(amp).lower()}"]
        assert train_main(args) == 0
        return logged_losses(str(out / "pretrain"))[0][1]

    full, mixed = first_loss(False), first_loss(True)
    assert math.isfinite(mixed) and mixed != full
    assert abs(mixed - full) < 0.05 * abs(full)


@pytest.mark.timeout(600)
def test_cub_recipe_smoke_with_cross_domain(cub_official_root, tmp_path):
    """scripts/recipe_cub_cpu.sh in SMOKE mode on a generated official-layout CUB (boxes,
    split.json), with a miniImageNet run's models evaluated on the same CUB episodes."""
    import shutil
    holder = tmp_path / "cub"
    shutil.move(cub_official_root, holder / "CUB_200_2011")
    folders = sorted(os.listdir(holder / "CUB_200_2011" / "images"))
    k = 1000
    for folder in folders:                # 8 images per class: room for 5-shot 2-query episodes
        for j in (6, 7):
            rel = f"{folder}/extra_{j}.jpg"
            write_image(str(holder / "CUB_200_2011" / "images" / rel), k, size=20)
            with open(holder / "CUB_200_2011" / "images.txt", "a") as f:
                f.write(f"{k} {rel}\n")
            with open(holder / "CUB_200_2011" / "bounding_boxes.txt", "a") as f:
                f.write(f"{k} 2.0 3.0 10.0 8.0\n")
            k += 1
    # 8 generated classes; 5-way episodes need 5 per split, so two classes are in both
    (holder / "split.json").write_text(json.dumps({"train": folders[:3] + folders[6:], "val": folders[3:6] + folders[:2]}))
    out = tmp_path / "run"                 # its own models stand in for a miniImageNet run's
    env = dict(os.environ, SMOKE="1", PYTHON=sys.executable, MINI_RUN=str(out))
    run = subprocess.run(["bash", os.path.join(ROOT, "scripts", "recipe_cub_cpu.sh"), str(holder), str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    mini = out
    for shot, episodes in ((1, 3), (5, 2)):
        for method in ("deepemd", "protonet"):
            own = json.load(open(out / f"{method}_val_{shot}shot.json"))
            cross = json.load(open(out / f"mini_{method}_val_{shot}shot.json"))
            assert own["dataset"] == cross["dataset"] == "cub_official"
            assert own["episodes"] == cross["episodes"] == episodes and cross["n_shot"] == shot
            assert cross["checkpoint"].startswith(str(mini))
        simpleshot = json.load(open(out / f"pretrained_simpleshot_l2n_val_{shot}shot.json"))
        assert simpleshot["episodes"] == episodes and simpleshot["n_shot"] == shot
        assert simpleshot["checkpoint"] == str(out / "dense" / "pretrain" / "best.pt")


def test_protonet_l2n_is_nearest_centroid_of_normalised_features():
    from fewshot.models import create_model
    torch.manual_seed(0)
    model = create_model("protonet", "conv4", {"hidden": 8}, {"normalize": "l2n"}).eval()
    images = torch.randn(6, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        feats = F.normalize(model.backbone(images), dim=1)
        model.process_support_set(images, labels)
        logits = model(images[:2])
    centroids = torch.stack([feats[labels == c].mean(0) for c in range(3)])
    torch.testing.assert_close(logits, -torch.cdist(feats[:2], centroids).pow(2))
    with pytest.raises(ConfigError, match="^options.normalize: 'cl2' is not one of none, l2n"):
        create_model("protonet", "conv4", {}, {"normalize": "cl2"})
    with pytest.raises(ConfigError, match="^model.options.normalize: 'cl2'"):
        create_model("protonet", "conv4", {}, {"normalize": "cl2"}, where="model")
