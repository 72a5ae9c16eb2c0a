"""Training throughput on the CPU: Conv-4 pretraining images/s and DeepEMD meta-training
episodes/s, the project's default settings against the previous ones and against a plain
eager PyTorch loop, as ratios measured in one run.

Each configuration runs in a fresh process (the allocator setting is made at start-up), on
random 84 x 84 images held decoded in memory as PIL images, as the recipe's
``data.cache_images`` does (the cost does not depend on the pixels):

- ``plain``: a textbook eager loop: NCHW tensors already augmented in memory, Conv-4 with
  ReLU before max-pool, linear head, glibc's default malloc (``FEWSHOT_MALLOC=default``);
- ``previous``: the previous defaults of the CPU recipe: channels-last, torchvision's
  per-image augmentation in the loader, ReLU before max-pool, linear head, default malloc;
- ``new``: the current defaults: freed memory kept mapped (``fewshot._malloc``),
  channels-last, the batch augmentation (``data.gpu_augment``), max-pool before ReLU, cosine
  head; then ``new`` with one of those settings reverted, ``new`` under ``torch.compile``
  (its compilation is in the warm-up steps, reported as ``warmup_seconds``), and ``new`` at
  70 and 56 px (the progressive-resizing phases of the recipe).

Each row reports images (or episodes) per second over ``--steps`` steps after ``--warmup``,
the user and system CPU seconds per step (system time is the allocator's page faults) and
the process's peak memory. ``--profile`` adds where a ``new`` pretraining step and a ``new``
meta-training step spend their time (operator CPU time by kind; the rest of the wall time is
the EMD solver, Python and the optimizer).

    python benchmarks/throughput.py --json benchmarks/throughput.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

PRETRAIN = [  # name, settings
    ("plain", dict(layout="nchw", augment="none", order="relu_pool", head="linear", malloc=False)),
    ("previous", dict(layout="cl", augment="loader", order="relu_pool", head="linear", malloc=False)),
    ("new", dict(layout="cl", augment="batch", order="pool_relu", head="cosine", malloc=True)),
    ("new, default malloc", dict(layout="cl", augment="batch", order="pool_relu", head="cosine", malloc=False)),
    ("new, NCHW", dict(layout="nchw", augment="batch", order="pool_relu", head="cosine", malloc=True)),
    ("new, loader augmentation", dict(layout="cl", augment="loader", order="pool_relu", head="cosine", malloc=True)),
    ("new, ReLU before pool", dict(layout="cl", augment="batch", order="relu_pool", head="cosine", malloc=True)),
    ("new + torch.compile", dict(layout="cl", augment="batch", order="pool_relu", head="cosine", malloc=True,
                                 compile=True)),
    ("new at 70 px", dict(layout="cl", augment="batch", order="pool_relu", head="cosine", malloc=True, size=70)),
    ("new at 56 px", dict(layout="cl", augment="batch", order="pool_relu", head="cosine", malloc=True, size=56)),
    ("new, bf16 autocast", dict(layout="cl", augment="batch", order="pool_relu", head="cosine", malloc=True,
                                bf16=True)),
    ("new, bf16 autocast, NCHW", dict(layout="nchw", augment="batch", order="pool_relu", head="cosine", malloc=True,
                                      bf16=True)),
    ("new, bf16 autocast at 70 px", dict(layout="cl", augment="batch", order="pool_relu", head="cosine",
                                         malloc=True, size=70, bf16=True)),
    ("new, bf16 autocast at 56 px", dict(layout="cl", augment="batch", order="pool_relu", head="cosine",
                                         malloc=True, size=56, bf16=True)),
]
META = [
    ("plain", dict(layout="nchw", augment="none", order="relu_pool", malloc=False)),
    ("previous", dict(layout="cl", augment="loader", order="relu_pool", malloc=False)),
    ("new", dict(layout="cl", augment="batch", order="pool_relu", malloc=True)),
    ("new, bf16 autocast", dict(layout="cl", augment="batch", order="pool_relu", malloc=True, bf16=True)),
]


# ----------------------------------------------------------------------------- worker

def _backbone(order: str):
    import torch.nn as nn

    from fewshot.models import create_backbone
    net = create_backbone("conv4")
    if order == "relu_pool":      # the textbook order: conv, BN, ReLU, max-pool
        layers = list(net.encoder)
        for i in range(len(layers) - 1):
            if isinstance(layers[i], nn.MaxPool2d) and isinstance(layers[i + 1], nn.ReLU):
                layers[i], layers[i + 1] = layers[i + 1], layers[i]
        net.encoder = nn.Sequential(*layers)
    return net


class _Images:
    """In-memory PIL images with a transform (the cached-image loader path)."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def _batches(spec, n_images: int, batch: int, size: int):
    """Endless (images, labels) batches as the trainer receives them, augmented."""
    import numpy as np
    import torch
    from PIL import Image

    from fewshot.data import build_transform, device_augment
    rng = np.random.default_rng(0)
    labels = torch.arange(n_images) % 64
    if spec["augment"] == "none":
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        while True:
            yield x, labels[:batch]
    pil = [Image.fromarray(rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)) for _ in range(n_images)]
    on_device = spec["augment"] == "batch"
    transform = build_transform("deepemd", 84 if on_device else size, train=True, on_device=on_device)
    loader = torch.utils.data.DataLoader(_Images(pil, labels.tolist(), transform), batch_size=batch,
                                         shuffle=True, drop_last=True, num_workers=0,
                                         generator=torch.Generator().manual_seed(0))
    augment = device_augment(84)
    g = torch.Generator().manual_seed(0)
    while True:
        for images, y in loader:
            yield (augment(images, g, size=size) if on_device else images), y


def _worker(spec) -> dict:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from fewshot import _malloc
    from fewshot.models import CosineClassifier, create_model
    _malloc.configure()               # as train.py does (FEWSHOT_MALLOC=default: left alone)
    torch.manual_seed(0)
    size, steps, warmup = spec.get("size", 84), spec["steps"], spec["warmup"]
    backbone = _backbone(spec["order"])
    cl = spec["layout"] == "cl"
    if spec["kind"] == "pretrain":
        batch = spec["batch"]
        head = CosineClassifier(64, 64) if spec["head"] == "cosine" else nn.Linear(64, 64)
        net = nn.Sequential(backbone, head)
        data = _batches(spec, 4 * batch, batch, size)
    else:
        batch = 5 * (1 + 15)
        net = create_model("deepemd", "conv4", {}, {"solver": "exact"})
        net.backbone = backbone
        data = _batches(spec, 4 * batch, batch, size)
    if cl:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    forward = torch.compile(net) if spec.get("compile") else net

    def step():
        images, labels = next(data)
        if cl:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(spec.get("bf16"))):
            if spec["kind"] == "pretrain":
                loss = F.cross_entropy(forward(images), labels)
            else:
                support_labels = torch.arange(5)
                logits = net.episode_logits(images[:5], support_labels, images[5:])
                loss = F.cross_entropy(logits, torch.arange(5).repeat_interleave(15))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t_warm = time.perf_counter()
    for _ in range(warmup):
        step()
    warmup_seconds = time.perf_counter() - t_warm
    if spec.get("profile"):
        return _profile(step, steps)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    unit = batch if spec["kind"] == "pretrain" else 1
    return {"per_second": unit * steps / seconds, "seconds_per_step": seconds / steps,
            "user_s_per_step": (r1.ru_utime - r0.ru_utime) / steps,
            "sys_s_per_step": (r1.ru_stime - r0.ru_stime) / steps,
            "peak_memory_mb": r1.ru_maxrss / 1024, "warmup_seconds": warmup_seconds,
            "malloc": _malloc.status(),
            "threads": torch.get_num_threads()}


CATEGORIES = [("convolution", ("convolution",)), ("batch norm", ("batch_norm",)),
              ("ReLU + max-pool", ("threshold", "relu", "clamp", "max_pool")),
              ("augmentation (grid_sample)", ("grid_sampler",)),
              ("memory fill / copy", ("fill_", "zero_", "copy_", "empty", "contiguous")),
              ("classifier head + loss", ("linear", "addmm", "mm", "norm", "softmax", "nll", "div"))]


def _profile(step, steps: int) -> dict:
    """Self CPU time of a step's operators, grouped (summed over threads); what is not in a
    group (the EMD solver, data loading in Python, the optimizer, autograd bookkeeping)
    is ``other``."""
    from torch.profiler import ProfilerActivity, profile
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    wall = (time.perf_counter() - t0) / steps
    groups = {name: 0.0 for name, _ in CATEGORIES}
    for event in prof.key_averages():
        for name, keys in CATEGORIES:
            if any(k in event.key for k in keys):
                groups[name] += event.self_cpu_time_total / 1e6 / steps
                break
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6 / steps
    groups["other operators"] = total - sum(groups.values())
    return {"wall_s_per_step": wall, "op_cpu_s_per_step": groups}


# ----------------------------------------------------------------------------- driver

def _run(spec: dict) -> dict:
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_MAX_", None)
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    if not spec["malloc"]:
        env["FEWSHOT_MALLOC"] = "default"
    else:
        env.pop("FEWSHOT_MALLOC", None)
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                         capture_output=True, text=True, cwd=os.path.dirname(HERE))
    if out.returncode:
        raise RuntimeError(f"worker {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="timed pretraining steps per row")
    parser.add_argument("--meta-steps", type=int, default=12, help="timed episodes per row")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--profile", action="store_true", help="also break a new pretraining step down")
    parser.add_argument("--json", default="benchmarks/throughput.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import fewshot  # noqa: F401  (first, as in train.py: the allocator setting at start-up)
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    from _common import write_results     # benchmarks/ is the script's folder, first on sys.path

    rows = []
    for kind, table, steps in (("pretrain", PRETRAIN, args.steps), ("meta", META, args.meta_steps)):
        base = {}
        for name, settings in table:
            spec = dict(settings, kind=kind, steps=steps, warmup=args.warmup, batch=args.batch)
            result = _run(spec)
            base.setdefault("plain", result["per_second"])
            if name == "previous":
                base["previous"] = result["per_second"]
            row = {"stage": kind, "config": name, "size": spec.get("size", 84), **settings, **result,
                   "x_plain": result["per_second"] / base["plain"],
                   "x_previous": result["per_second"] / base["previous"] if "previous" in base else None}
            rows.append(row)
            print(f"{kind:8s} {name:28s} {row['per_second']:8.2f}/s  x plain {row['x_plain']:.2f}"
                  + (f"  x previous {row['x_previous']:.2f}" if row["x_previous"] else "")
                  + f"  sys {row['sys_s_per_step']:.2f} s/step  peak {row['peak_memory_mb']:.0f} MB",
                  flush=True)
    extra = {}
    if args.profile:
        for kind, table in (("pretrain", PRETRAIN), ("meta", META)):
            spec = dict(dict(table)["new"], kind=kind, steps=3, warmup=args.warmup, batch=args.batch,
                        profile=True)
            extra[f"profile_new_{kind}_step"] = _run(spec)
            print(kind, json.dumps(extra[f"profile_new_{kind}_step"], indent=1))
    write_results(args.json, rows, **extra)


if __name__ == "__main__":
    main()
