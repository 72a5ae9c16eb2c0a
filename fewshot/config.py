"""Typed experiment configuration.

A config is a tree of dataclasses. YAML files fill it (a file may name a ``base``
file that it extends), ``key.sub=value`` overrides change single keys, and every
unknown key is a :class:`~fewshot.errors.ConfigError` naming the file and key.
Method-, backbone- and dataset-specific options live in ``options`` dicts that
are checked against the constructor they are passed to (see ``registry.py``).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

from .errors import ConfigError
from .options import Option


@dataclass
class DataConfig:
    name: str = "miniimagenet"          # a name from fewshot.data.datasets()
    root: str = "data/miniimagenet"
    options: Dict[str, Any] = field(default_factory=dict)  # dataset-specific keyword arguments
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    image_size: int = 84
    transform: str = "deepemd"          # deepemd | plain | grayscale
    augment: bool = True                # train-time augmentation
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area range
    gpu_augment: bool = False           # augment training batches on the device (deepemd transform)
    cache_images: bool = False          # decode every image once and keep it in memory
    workers: int = 0                    # DataLoader worker processes


@dataclass
class EpisodeConfig:
    n_way: int = 5
    n_shot: int = 1
    n_query: int = 15


@dataclass
class ModelConfig:
    method: str = "deepemd"             # a name from fewshot.models.methods()
    backbone: str = "resnet12"          # a name from fewshot.models.backbones()
    backbone_options: Dict[str, Any] = field(default_factory=dict)
    options: Dict[str, Any] = field(default_factory=dict)  # method keyword arguments


@dataclass
class PretrainConfig:
    epochs: int = 120
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "step"              # step (x gamma every step_size epochs) | cosine (to 0)
    step_size: int = 30                 # epochs between learning-rate decays (schedule step)
    gamma: float = 0.2
    warmup_epochs: float = 0.0          # linear learning-rate warm-up, in (fractional) epochs
    label_smoothing: float = 0.0        # cross-entropy label smoothing
    head: str = "linear"                # linear | cosine (scaled cosine-similarity classifier)
    head_scale: float = 10.0            # logit scale of the cosine head
    size_schedule: List[Any] = field(default_factory=list)  # [[epoch, size], ...] progressive
                                        # resizing; the last size must be data.image_size
    val_episodes: int = 200             # fixed 5-way 1-shot validation episodes per check
    val_every: int = 1                  # epochs between validations
    class_tree: str = ""                # JSON {"nodes": [...], "parents": [...], "lengths": [...]}
    emd_loss_weight: float = 0.0        # loss = CE + weight * EMD^rho on class_tree
    emd_loss_rho: float = 2.0
    dense_weight: float = 0.0           # loss += weight * CE of every feature-map cell (dense classification)
    init: str = ""                      # checkpoint (or shipped name) whose backbone and head start the stage


@dataclass
class MetaConfig:
    epochs: int = 100
    episodes_per_epoch: int = 50
    n_way: int = 0                      # classes per training episode (0 = episode.n_way); validation
                                        # and evaluation episodes stay episode.n_way-way
    lr: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "step"              # step | cosine, as in pretrain
    step_size: int = 10
    gamma: float = 0.5
    warmup_epochs: float = 0.0
    val_episodes: int = 1000
    val_every: int = 1
    pretrained: str = ""                # checkpoint of the pretrain stage ("" = from scratch)
    val_at_start: bool = False          # validate before the first step: best.pt starts as the
                                        # initial model (fine-tuning: never ends below it on val)


@dataclass
class EvalConfig:
    episodes: int = 0                   # 0 = 5000 for 1-shot, 600 otherwise (as in the paper)
    seed: int = 1                       # fixes the evaluation episodes
    split: str = "test"
    episodes_file: str = ""             # manifest (JSON/CSV) of fixed episodes
    n_query: int = 15


@dataclass
class RunConfig:
    stage: str = "meta"                 # pretrain | meta
    seed: int = 1
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    out: str = "runs/default"
    amp: bool = False                   # mixed precision: float16 on CUDA, bfloat16 on the CPU
    channels_last: bool = False         # channels-last memory format (convolutions; any device)
    max_steps: int = 0                  # stop a stage after this many optimisation steps (0 = no limit)
    log_every: int = 10
    checkpoint_every: int = 50          # steps between last.pt writes (and at every epoch end)
    progress: bool = True               # tqdm progress bars


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# What ``train.py --finetune MODEL`` changes in MODEL's own config (then the user's flags and
# overrides apply): meta-training only, from MODEL, validated before the first step so that
# best.pt is MODEL itself unless a later validation beats it; episode.n_way-way training episodes
# (a small folder of classes suffices); the CPU recipe's meta.lr, which gave the most on CUB
# with 23 and with 8 training classes (docs/training.md#fine-tuning-a-shipped-model).
FINETUNE_DEFAULTS: Dict[str, Any] = {
    "run": {"stage": "meta", "max_steps": 0},
    "meta": {"epochs": 4, "episodes_per_epoch": 25, "n_way": 0, "lr": 2.0e-3, "schedule": "cosine",
             "warmup_epochs": 0.0, "val_episodes": 200, "val_every": 1, "val_at_start": True},
}


# ----------------------------------------------------------------------------- loading

class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML would keep the last)."""


def _mapping_without_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice in one mapping (the first would be "
                            f"silently replaced)", key_node.start_mark)
        seen.add(key)
    mapping = loader.construct_mapping(node, deep=deep)
    for key_node, value_node in node.value:          # ``run:`` with nothing under it
        if isinstance(value_node, yaml.ScalarNode) and value_node.tag.endswith(":null") and value_node.value == "":
            mapping[loader.construct_object(key_node)] = _EMPTY
    return mapping


class _Empty:
    """An empty section in a YAML file (``run:`` and nothing under it): over a ``base:`` it
    changes nothing, where ``run: null`` resets the inherited section; elsewhere it is None."""

    def __repr__(self) -> str:
        return "None"


_EMPTY = _Empty()


def _strip_empty(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _strip_empty(v) for k, v in data.items()}
    return None if data is _EMPTY else data


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _read_yaml(path: str, chain: tuple = ()) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    real = os.path.realpath(path)
    if real in chain:
        raise ConfigError(f"config file {path!r}: its 'base:' chain comes back to itself "
                          f"({' -> '.join(os.path.basename(p) for p in chain + (real,))})")
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = yaml.load(f, Loader=_UniqueKeyLoader) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path!r} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping at top level")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"config file {path!r}: 'base' must be one file name (a string), got {base!r}")
        base_path = os.path.join(os.path.dirname(path), base)
        data = merge_config(_read_yaml(base_path, chain + (real,)), data)
    return _strip_empty(data)


def merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``; an empty YAML section of ``update``
    (``run:`` with nothing under it) keeps ``base``'s, an explicit null replaces it."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        elif not (value is _EMPTY and key in out):
            out[key] = copy.deepcopy(value)
    return out


def merge_config(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    """:func:`merge` for configs: an ``update`` that switches ``data.name`` to another dataset
    without giving ``data.options`` starts from that dataset's defaults, so one dataset's options
    (CUB's bounding_box, a split_file) never follow a model or a base config to another."""
    data = update.get("data") if isinstance(update.get("data"), dict) else {}
    old = (base.get("data") or {}) if isinstance(base.get("data"), dict) else {}
    if "name" in data and data["name"] != old.get("name") and "options" not in data and old.get("options"):
        base = {**base, "data": {k: v for k, v in old.items() if k != "options"}}
    return merge(base, update)


def apply_overrides(data: Dict[str, Any], overrides) -> Dict[str, Any]:
    """``data`` with each override (``"a.b=v"`` string or a dict) merged in turn."""
    for item in overrides or []:
        data = merge_config(data, parse_override(item) if isinstance(item, str) else item)
    return data


def parse_override(text: str) -> Dict[str, Any]:
    """``"meta.lr=0.001"`` -> ``{"meta": {"lr": 0.001}}`` (values parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    out: Dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], where)
    if origin in (dict, Dict):
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return list(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp} at {where}")


def from_dict(cls: type, data: Dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"valid keys: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp = hints[name]
        sub = f"{where}.{name}" if where != "config" else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, data[name] or {}, sub)
        else:
            kwargs[name] = _coerce(data[name], tp, sub)
    return cls(**kwargs)


def load_config(path: Optional[str] = None, overrides: Optional[List[Any]] = None) -> Config:
    """Load ``path`` (optional) and apply ``overrides`` (``"a.b=v"`` strings or dicts)."""
    data: Dict[str, Any] = _read_yaml(path) if path else {}
    where = f"config file {path!r}" if path else "config"
    try:
        from_dict(Config, data, where)  # report file errors against the file
    except ConfigError as e:
        raise ConfigError(str(e)) from None
    return build_config(data, overrides)


def build_config(data: Dict[str, Any], overrides=(), where: str = "config") -> Config:
    """The checked Config of a config mapping (a file's, a checkpoint's) with ``overrides``
    applied (:func:`apply_overrides`); errors name ``where``."""
    config = from_dict(Config, apply_overrides(data, overrides), where)
    check(config)
    return config


def size_schedule(pretrain: PretrainConfig, image_size: int) -> List[List[int]]:
    """``pretrain.size_schedule`` checked: [[first_epoch, size], ...] with first epochs
    0, increasing, sizes >= 16 and the last size ``image_size`` (evaluation sees the
    standard resolution); [] when not set."""
    sched = pretrain.size_schedule
    if not sched:
        return []
    where = "pretrain.size_schedule"
    pairs = []
    for item in sched:
        if (not isinstance(item, (list, tuple)) or len(item) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)):
            raise ConfigError(f"{where}: expected a list of [epoch, size] integer pairs, got {item!r}")
        pairs.append([int(item[0]), int(item[1])])
    epochs = [e for e, _ in pairs]
    if epochs[0] != 0 or any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise ConfigError(f"{where}: epochs must start at 0 and increase, got {epochs}")
    if epochs[-1] >= pretrain.epochs:
        raise ConfigError(f"{where}: phase at epoch {epochs[-1]} starts after the last epoch "
                          f"(pretrain.epochs {pretrain.epochs})")
    if any(size < 16 for _, size in pairs):
        raise ConfigError(f"{where}: sizes must be at least 16 pixels, got {[s for _, s in pairs]}")
    if pairs[-1][1] != image_size:
        raise ConfigError(f"{where}: the last phase must train at data.image_size ({image_size}) "
                          f"so that evaluation sees the training resolution, got {pairs[-1][1]}")
    return pairs


def _int(low: int, high: Optional[int] = None) -> Option:
    return Option(low, int, low=low, high=high)


def _num(low: float, low_open: bool = False, high: Optional[float] = None, high_open: bool = False) -> Option:
    return Option(low, float, low=low, low_open=low_open, high=high, high_open=high_open)


_SEED = _int(0, 2 ** 31 - 1)
_STAGE_OPTIONS = {          # the same admitted values in pretrain.* and meta.*
    "epochs": _int(1), "momentum": _num(0, high=1, high_open=True), "weight_decay": _num(0),
    "step_size": _int(1), "gamma": _num(0, low_open=True), "val_episodes": _int(1), "val_every": _int(1),
    "warmup_epochs": _num(0), "lr": _num(0, low_open=True),
    "schedule": Option("step", str, choices=("step", "cosine"))}
# key -> the values it admits (emd.Option, the validator of model and solver options too),
# checked when a config loads
_OPTIONS: Dict[str, Option] = {
    "data.image_size": _int(16), "data.workers": _int(0),
    "episode.n_way": _int(2), "episode.n_shot": _int(1), "episode.n_query": _int(1),
    **{f"{stage}.{k}": opt for stage in ("pretrain", "meta") for k, opt in _STAGE_OPTIONS.items()},
    "pretrain.batch_size": _int(1), "pretrain.emd_loss_weight": _num(0), "pretrain.dense_weight": _num(0),
    "pretrain.head": Option("linear", str, choices=("linear", "cosine")),
    "pretrain.head_scale": _num(0, low_open=True), "pretrain.label_smoothing": _num(0, high=1, high_open=True),
    "pretrain.emd_loss_rho": _num(1),       # 1: EMD, 2: EMD^2
    "meta.episodes_per_epoch": _int(1), "meta.n_way": _int(0),
    "eval.episodes": _int(0), "eval.n_query": _int(1), "eval.seed": _SEED,
    "run.max_steps": _int(0), "run.log_every": _int(1), "run.checkpoint_every": _int(1),
    "run.seed": _SEED, "run.stage": Option("both", str, choices=("pretrain", "meta", "both")),
}


def check(config: Config) -> None:
    """Range checks of numeric keys and of the training-schedule keys (ConfigError naming
    the key), so that a bad value stops a run before any training work."""
    for key, opt in _OPTIONS.items():
        section, name = key.split(".")
        opt.check(getattr(getattr(config, section), name), key)
    scale = config.data.crop_scale
    if (len(scale) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)
            or not 0 < scale[0] <= scale[1] <= 1):
        raise ConfigError(f"data.crop_scale: expected [min, max] area fractions with "
                          f"0 < min <= max <= 1, got {scale!r}")
    if config.meta.n_way == 1:
        raise ConfigError("meta.n_way: expected 0 (= episode.n_way) or at least 2 classes per "
                          "training episode, got 1")
    p = config.pretrain
    if p.emd_loss_weight > 0 and not p.class_tree:
        raise ConfigError("pretrain.emd_loss_weight > 0 needs pretrain.class_tree (a JSON tree)")
    if p.class_tree and p.emd_loss_weight == 0:
        raise ConfigError(f"pretrain.class_tree is set ({p.class_tree!r}) but pretrain.emd_loss_weight "
                          f"is 0, so the tree would be ignored: set the weight (e.g. 0.5) or drop the tree")
    size_schedule(p, config.data.image_size)


def save_config(config: Config, path: str) -> None:
    from ._io import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
