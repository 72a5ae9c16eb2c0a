"""The two training stages: ``pretrain`` (classification over the base classes) and
``meta`` (episodic). Both log to TensorBoard, write ``last.pt`` and ``best.pt``
atomically and resume exactly where ``last.pt`` was written: the batch order, the
episodes and every item's augmentation are functions of (seed, epoch, position), the
data loaders draw from their own generators, and the RNG states travel in the checkpoint,
so a run killed at any point and resumed ends with the weights of the uninterrupted run.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config, build_config, save_config, size_schedule
from ..data import EpisodeSampler, ManifestSampler, build_dataset, build_transform, device_augment
from ..data.transforms import image_mode
from ..data.datasets import ImageDataset
from ..emd.hierarchy import load_class_tree
from ..errors import ConfigError, FewShotError, OptionError
from ..models import CosineClassifier, FewShotClassifier, create_model
from ..models.hub import resolve_checkpoint
from . import _distributed as ddp
from . import schedules
from .._io import lock_folder
from ._loop import run_epochs
from ._state import Stage, first_line, load_weights, log, resume_path, seed_everything
from .checkpoint import load_checkpoint, remove_stale_temporaries
from .evaluate import evaluate
from .metrics import accuracy


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"run.device: {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device: {name!r} asked for, but CUDA is not available here")
    return device


def load_split(config: Config, split: str, train: bool) -> ImageDataset:
    """Split ``split`` of the configured dataset, with the train or test transform."""
    d = config.data
    ds = build_dataset(d.name, d.root, split, where="data.options", **d.options)
    if d.cache_images:
        ds.enable_cache()
    augment = train and d.augment
    try:
        transform = build_transform(d.transform, d.image_size, train=augment, on_device=augment and d.gpu_augment,
                                    crop_scale=d.crop_scale)
    except OptionError as e:
        raise e.under("data") from None
    return ds.with_transform(transform)


def _device_augmenter(config: Config, rank: int, world: int) -> Optional[Callable]:
    """``augment(images, step, size=None)`` for training batches: the ``data.gpu_augment``
    batch augmentation (seeded by run.seed, step and process rank, so resuming repeats it;
    output side ``size``, default data.image_size), or None when the loaders augment."""
    d = config.data
    if not (d.augment and d.gpu_augment):
        return None
    batch_augment = device_augment(d.image_size, d.crop_scale)

    def augment(images: torch.Tensor, step: int, size: Optional[int] = None) -> torch.Tensor:
        g = torch.Generator().manual_seed((config.run.seed * 1_000_003 + step) * world + rank)
        return batch_augment(images, g, size=size)
    return augment


class _Seeded(torch.utils.data.Dataset):
    """Item k is ``source[indices[k]]`` computed with torch's global generator seeded by
    ``seeds[k]`` (and restored afterwards): an item's random augmentation depends only on
    its seed, not on the process or worker that loads it nor on what was loaded before, so
    a resumed run augments its remaining items as the uninterrupted run did."""

    def __init__(self, source: torch.utils.data.Dataset, indices: List[int], seeds: List[int]):
        self.source, self.indices, self.seeds = source, indices, seeds

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seeds[k])
            return self.source[self.indices[k]]


def _item_seed(*parts: int) -> int:
    """A seed from integers (run seed, epoch, position, ...), in [0, 2**63)."""
    h = 0
    for p in parts:
        h = (h * 1_000_003 + int(p) + 1) % (2 ** 63 - 25)
    return h


def _loader(dataset, config: Config, device: torch.device, seed: int, **kw):
    """A DataLoader that draws its workers' base seed from its own generator (seeded by
    ``seed``), not from the global one, so creating it changes no RNG state."""
    return torch.utils.data.DataLoader(dataset, num_workers=config.data.workers,
                                       pin_memory=device.type == "cuda",
                                       generator=torch.Generator().manual_seed(seed), **kw)


def build_model(config: Config) -> FewShotClassifier:
    """The model of ``config``, checked against the images it will see: a backbone that cannot
    take data.image_size images of the transform's channels, or that leaves no feature map, is a
    ConfigError naming the keys (before any output is written)."""
    m = config.model
    model = create_model(m.method, m.backbone, m.backbone_options, m.options, where="model")
    channels = len(image_mode(config.data.transform))      # "L" -> 1, "RGB" -> 3
    size = config.data.image_size
    probe = torch.zeros(1, channels, size, size)
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()
            fmap = model.backbone.forward_features(probe)
    except RuntimeError as e:
        raise ConfigError(f"model.backbone_options {m.backbone_options!r}: this {m.backbone} cannot take "
                          f"{channels} x {size} x {size} images (data.image_size, data.transform "
                          f"{config.data.transform!r}): {first_line(e)}") from None
    finally:
        model.train(was_training)
    if fmap.dim() != 4 or min(fmap.shape[2:]) < 1:
        raise ConfigError(f"model.backbone_options {m.backbone_options!r}: this {m.backbone} leaves no "
                          f"feature map of {size} x {size} images (shape {tuple(fmap.shape)}); use fewer "
                          f"pooling blocks or a larger data.image_size")
    return model


def load_trained(path: str, overrides=(), device: str = "") -> Tuple[Config, FewShotClassifier]:
    """The config (with ``key=value`` overrides applied) and model of checkpoint ``path``,
    the model on ``device`` (default: the config's run.device)."""
    path = resolve_checkpoint(path)               # a file, or the name of a shipped model
    state = load_checkpoint(path)
    data = state.get("config")
    if not isinstance(data, dict):
        raise FewShotError(f"checkpoint {path!r} holds no 'config': it was not written by train.py")
    config = build_config(data, overrides, f"config of checkpoint {path!r}")
    model = build_model(config).to(resolve_device(device or config.run.device))
    load_weights(model, state["model"], f"checkpoint {path!r}")
    return config, model


def episode_sampler(config: Config, split: str, n_way: int, n_shot: int, n_query: int,
                    seed: int, episodes_file: str = ""):
    dataset = load_split(config, split, train=False)
    if episodes_file:
        return ManifestSampler(dataset, episodes_file)
    return EpisodeSampler(dataset, n_way, n_shot, n_query, seed=seed)


def _prepare(config: Config, name: str, resume: Optional[str],
             overwrite: bool) -> Tuple[str, torch.device, FewShotClassifier]:
    """The stage's folder, device and model: the model is built (seeded by run.seed) and
    --out locked (:func:`lock_folder`) before anything is read from it; nothing is written
    until :func:`_begin`, so a bad option, checkpoint or tree leaves no output behind. A stage
    folder that already holds a run is that run's (:func:`_claim`)."""
    seed_everything(config.run.seed)
    model = build_model(config)
    folder = os.path.join(config.run.out, name)
    device = ddp.setup(resolve_device(config.run.device))
    if ddp.is_main():
        lock_folder(config.run.out)
        _claim(folder, name, resume, overwrite)
    return folder, device, model.to(device)


def _claim(folder: str, name: str, resume: Optional[str], overwrite: bool) -> None:
    """A stage folder belongs to one run: one that holds files is continued (``resume``), moved
    aside to ``FOLDER.previous-N`` (``overwrite``) or refused, never written over."""
    held = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    if not held or resume is not None:
        return
    k = 1
    while os.path.exists(f"{folder}.previous-{k}"):
        k += 1
    aside = f"{folder}.previous-{k}"
    if not overwrite:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise FewShotError(f"--out {os.path.dirname(folder)!r} already holds a {name} run ({folder}: {shown}); "
                           f"pass --resume to continue it, --overwrite to move it aside to {aside}, "
                           f"or train into another --out")
    os.replace(folder, aside)
    log(f"[{name}] the earlier {name} run in {folder} moved aside to {aside}")


def _begin(config: Config, folder: str) -> None:
    """The stage's first writes, once every check has passed: its folder (temporaries of an
    interrupted write removed), its config.yaml, and the run's config.yaml (the config of the
    stage begun last, which ``train.py --out RUN --resume`` continues)."""
    if not ddp.is_main():
        return
    os.makedirs(folder, exist_ok=True)
    stale = remove_stale_temporaries(folder)
    if stale:
        log(f"removed {stale} incomplete checkpoint file(s) of an interrupted write in {folder}")
    save_config(config, os.path.join(folder, "config.yaml"))
    save_config(config, os.path.join(config.run.out, "config.yaml"))    # the stage begun last


def _validator(config: Config, model: FewShotClassifier, device: torch.device, stage: str,
               n_way: int, n_shot: int):
    """Validation of a stage on ``{stage}.val_episodes`` fixed episodes; it says how many
    before it starts (a short ``--max-steps`` run still validates on all of them)."""
    n_episodes = getattr(config, stage).val_episodes
    sampler = episode_sampler(config, config.data.val_split, n_way, n_shot, config.eval.n_query,
                              seed=config.eval.seed)

    def validate():
        log(f"[{stage}] validating on {n_episodes} {n_way}-way {n_shot}-shot episodes of "
            f"{config.data.val_split} ({stage}.val_episodes={n_episodes})")
        return evaluate(model, sampler, n_episodes, device, progress=False,
                        channels_last=config.run.channels_last)
    return validate


def pretrain(config: Config, resume: Optional[str] = None, overwrite: bool = False) -> str:
    """Classification pretraining over all train classes; returns the best checkpoint path.
    ``resume``: None (a new run), "" (the stage's last.pt) or a checkpoint path; ``overwrite``
    moves an earlier run in the stage folder aside instead of refusing it."""
    p = config.pretrain
    train_set = load_split(config, config.data.train_split, train=True)  # data errors first
    steps_per_epoch = len(train_set) // p.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"pretrain.batch_size {p.batch_size} exceeds the {len(train_set)} "
                          f"training images")
    sizes = size_schedule(p, config.data.image_size)
    if sizes and not (config.data.augment and config.data.gpu_augment):
        raise ConfigError("pretrain.size_schedule resizes the batch augmentation: it needs "
                          "data.augment=true and data.gpu_augment=true")
    emd_loss = None
    if p.emd_loss_weight > 0:         # with a class tree (checked when the config loaded)
        emd_loss = load_class_tree(p.class_tree, train_set.classes, p.emd_loss_rho, where="pretrain.class_tree")
    folder, device, model = _prepare(config, "pretrain", resume, overwrite)   # after every check
    n_classes = len(train_set.classes)
    if p.head == "cosine":
        head = CosineClassifier(model.backbone.num_channels, n_classes, p.head_scale).to(device)
    else:
        head = nn.Linear(model.backbone.num_channels, n_classes).to(device)
    optimizer = schedules.sgd(list(model.parameters()) + list(head.parameters()), p.lr, p.momentum,
                     p.nesterov, p.weight_decay)
    scheduler = schedules.scheduler(optimizer, p, steps_per_epoch)
    if p.init:
        loaded = load_pretrained(model, p.init, "pretrain.init", {"head": head})
        log(f"[pretrain] backbone{' and head' if loaded else ''} initialised from {p.init}")
    stage = Stage("pretrain", config, model, {"head": head}, optimizer, scheduler, folder, device)
    path = resume_path(folder, resume)
    if path:
        stage.restore(path)
    _begin(config, folder)

    rank, size = ddp.world()
    if p.batch_size % size:
        raise ConfigError(f"pretrain.batch_size {p.batch_size} is not divisible by the {size} processes")
    net = ddp.wrap(_Classifier(model.backbone, head, dense=p.dense_weight > 0), device)
    channels_last = config.run.channels_last
    if channels_last:
        net.to(memory_format=torch.channels_last)

    logged_size = [None]

    def batches(epoch: int, offset: int):
        if sizes and schedules.size_at(sizes, epoch) != logged_size[0]:
            logged_size[0] = schedules.size_at(sizes, epoch)
            log(f"[pretrain] from epoch {epoch}: training images of {logged_size[0]} px")
        g = torch.Generator().manual_seed(config.run.seed * 100_003 + epoch)
        order = torch.randperm(len(train_set), generator=g)
        positions = torch.arange(len(train_set))[offset * p.batch_size:][rank::size].tolist()
        items = _Seeded(train_set, [int(order[i]) for i in positions],
                        [_item_seed(config.run.seed, epoch, i) for i in positions])
        return _loader(items, config, device, _item_seed(config.run.seed, epoch, offset),
                       batch_size=p.batch_size // size, drop_last=True)

    augment = _device_augmenter(config, rank, size)

    def step_fn(batch):
        images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        if augment is not None:
            images = augment(images, stage.step, size=schedules.size_at(sizes, stage.epoch))
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits, cells = net(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=p.label_smoothing)
        if cells is not None:                     # every cell of the map classified (dense classification)
            loss = loss + p.dense_weight * F.cross_entropy(
                cells, labels.repeat_interleave(len(cells) // len(labels)), label_smoothing=p.label_smoothing)
        if emd_loss is not None:
            loss = loss + p.emd_loss_weight * emd_loss(logits.float(), labels)
        return loss, accuracy(logits, labels), len(labels) * size

    log(f"[pretrain] {len(train_set.classes)} classes, {len(train_set)} images, "
        f"{steps_per_epoch} steps/epoch on {device}" + (f" x {size} processes" if size > 1 else ""))
    validate = _validator(config, model, device, "pretrain", 5, 1)
    run_epochs(stage, p.epochs, steps_per_epoch, batches, step_fn, validate, unit="images",
                val_every=p.val_every)
    return os.path.join(folder, "best.pt")


class _Classifier(nn.Module):
    """Backbone + classification head as one module (what DistributedDataParallel wraps in
    pretraining): logits [B, classes] of the pooled features and, with ``dense``, of every
    cell of the feature map, [B * h * w, classes] (image-major; else None)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, dense: bool = False):
        super().__init__()
        self.backbone, self.head, self.dense = backbone, head, dense

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if not self.dense:
            return self.head(self.backbone(images)), None
        fmap = self.backbone.forward_features(images)                       # [B, C, h, w]
        cells = fmap.flatten(2).transpose(1, 2).reshape(-1, fmap.shape[1])  # [B * h * w, C]
        return self.head(fmap.mean((2, 3))), self.head(cells)


class _Episodic(nn.Module):
    """``model.episode_logits`` as ``forward`` (what DistributedDataParallel wraps in meta-training)."""

    def __init__(self, model: FewShotClassifier):
        super().__init__()
        self.model = model

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor):
        return self.model.episode_logits(support, support_labels, query)


class _EpisodeRange(torch.utils.data.Dataset):
    """Steps [first, stop) of one epoch whose episodes start at ``base``: step j of process
    ``rank`` (of ``size``) is episode base + j * size + rank, so one process sees them all."""

    def __init__(self, sampler: EpisodeSampler, base: int, first: int, stop: int, rank: int = 0,
                 size: int = 1):
        self.sampler, self.base, self.first, self.stop = sampler, base, first, stop
        self.rank, self.size = rank, size

    def __len__(self) -> int:
        return self.stop - self.first

    def index(self, k: int) -> int:
        """The episode index of item k."""
        return self.base + (self.first + k) * self.size + self.rank

    def __getitem__(self, k: int):
        return self.sampler.episode(self.index(k))


def _first(items):
    return items[0]


def load_pretrained(model: FewShotClassifier, path: str, key: str = "meta.pretrained",
                    extra: Optional[Dict[str, nn.Module]] = None) -> List[str]:
    """Load the backbone (and any matching weights) of a checkpoint, or of a shipped model's
    name (fine-tuning it on your classes), into ``model``; and each module of ``extra`` (e.g.
    the pretraining head) from the checkpoint's modules of that name where they fit. Returns
    the names of ``extra`` that were loaded. Errors name ``key``."""
    path = resolve_checkpoint(path, key)
    checkpoint = load_checkpoint(path)
    state = checkpoint["model"]
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k.startswith("backbone.") and k not in matched]
    if missing:
        raise FewShotError(f"{key} {path!r}: backbone weights {missing[:3]} missing or of "
                           f"another shape; was it trained with the same backbone?")
    model.load_state_dict(matched, strict=False)
    loaded = []
    for name, module in (extra or {}).items():
        saved = (checkpoint.get("extra") or {}).get(name) or {}
        own = module.state_dict()
        if set(saved) == set(own) and all(saved[k].shape == own[k].shape for k in own):
            module.load_state_dict(saved)
            loaded.append(name)
    return loaded


def meta_train(config: Config, resume: Optional[str] = None, overwrite: bool = False) -> str:
    """Episodic training; returns the best checkpoint path (``resume``, ``overwrite``: as in
    :func:`pretrain`)."""
    m, e = config.meta, config.episode
    train_set = load_split(config, config.data.train_split, train=True)  # data errors first
    n_way = m.n_way or e.n_way            # training episodes may have more classes than tested
    try:
        sampler = EpisodeSampler(train_set, n_way, e.n_shot, e.n_query, seed=config.run.seed)
    except FewShotError as err:
        key = "meta.n_way" if m.n_way else "episode.n_way"
        raise type(err)(f"meta-training episodes ({key} {n_way}): {err}") from None
    folder, device, model = _prepare(config, "meta", resume, overwrite)
    if m.pretrained:
        load_pretrained(model, m.pretrained)
        log(f"[meta] backbone initialised from {m.pretrained}")
    else:
        log("[meta] no meta.pretrained checkpoint given: training from scratch")
    rank, size = ddp.world()
    steps_per_epoch = m.episodes_per_epoch // size
    if steps_per_epoch == 0:
        raise ConfigError(f"meta.episodes_per_epoch {m.episodes_per_epoch} is below the {size} processes")
    optimizer = schedules.sgd(model.parameters(), m.lr, m.momentum, m.nesterov, m.weight_decay)
    scheduler = schedules.scheduler(optimizer, m, steps_per_epoch)
    stage = Stage("meta", config, model, {}, optimizer, scheduler, folder, device)
    path = resume_path(folder, resume)
    if path:
        stage.restore(path)
    _begin(config, folder)
    net = ddp.wrap(_Episodic(model), device)
    channels_last = config.run.channels_last
    if channels_last:
        net.to(memory_format=torch.channels_last)

    def batches(epoch: int, offset: int):
        episodes = _EpisodeRange(sampler, epoch * m.episodes_per_epoch, offset, steps_per_epoch, rank, size)
        items = _Seeded(episodes, list(range(len(episodes))),
                        [_item_seed(config.run.seed, episodes.index(k)) for k in range(len(episodes))])
        return _loader(items, config, device, _item_seed(config.run.seed, epoch, offset),
                       batch_size=1, collate_fn=_first)

    augment = _device_augmenter(config, rank, size)

    def step_fn(episode):
        ep = episode.to(device)
        support, query = ep.support_images, ep.query_images
        if augment is not None:
            images = augment(torch.cat([support, query]), stage.step)
            support, query = images[:len(support)], images[len(support):]
        if channels_last:
            support = support.contiguous(memory_format=torch.channels_last)
            query = query.contiguous(memory_format=torch.channels_last)
        logits = net(support, ep.support_labels, query)
        loss = F.cross_entropy(logits, ep.query_labels)
        return loss, accuracy(logits, ep.query_labels), size

    details = "".join(f", {k} {v}" for k, v in getattr(model, "describe", dict)().items())
    log(f"[meta] {n_way}-way {e.n_shot}-shot {e.n_query}-query, {config.model.method} / "
        f"{config.model.backbone}{details} on {device}" + (f" x {size} processes" if size > 1 else ""))
    validate = _validator(config, model, device, "meta", e.n_way, e.n_shot)
    run_epochs(stage, m.epochs, steps_per_epoch, batches, step_fn, validate, unit="episodes",
                val_every=m.val_every, on_validate=_matching_picture(config, model, e.n_way, e.n_shot),
               validate_first=m.val_at_start)
    return os.path.join(folder, "best.pt")


def _matching_picture(config: Config, model: FewShotClassifier, n_way: int, n_shot: int):
    """For a method that offers a matching (DeepEMD): ``on_validate`` drawing the matching of the first query of validation
    episode 0 (fixed by eval.seed) to TensorBoard as ``val/matching``; else None."""
    if not model.offers_matching:
        return None
    sampler = episode_sampler(config, config.data.val_split, n_way, n_shot, config.eval.n_query,
                              seed=config.eval.seed)
    episode = sampler.episode(0)

    def add(writer, step: int) -> None:
        from ..viz import draw, explain_episode
        writer.add_figure("val/matching", draw(explain_episode(model, episode, [0]), episode), step)
    return add
