"""Checkpointing and RNG state of a training stage: the state a checkpoint holds (weights,
optimiser, schedule, step, the RNG states of python, numpy and torch), restoring it exactly,
and which config keys a resumed stage may change."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from ..config import Config
from ..errors import FewShotError
from ..models import FewShotClassifier
from . import _distributed as ddp
from .checkpoint import load_checkpoint


def log(msg: str) -> None:
    if not ddp.is_main():
        return
    tqdm.write(msg)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_state() -> Dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict) -> None:
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def load_weights(module: nn.Module, state: Dict, what: str) -> None:
    """``module.load_state_dict(state)``, or a FewShotError starting with ``what`` that names
    the first missing, unexpected or mis-shaped weight."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shaped:
        if shaped:
            k = shaped[0]
            detail = f"weight {k!r} has shape {tuple(state[k].shape)}, the model's {tuple(own[k].shape)}"
        elif missing:
            detail = f"{len(missing)} weight(s) missing, e.g. {missing[0]!r}"
        else:
            detail = f"{len(unexpected)} unexpected weight(s), e.g. {unexpected[0]!r}"
        raise FewShotError(f"{what}: the weights do not fit the configured model ({detail}); "
                           f"was it trained with another model.backbone or model.method?")
    module.load_state_dict(state)


# keys a resumed stage may change: where things are and how the run is watched, not what it computes
RESUMABLE = {"data.root", "data.workers", "data.cache_images", "run.device", "run.out", "run.stage",
              "run.max_steps", "run.log_every", "run.checkpoint_every", "run.progress", "meta.pretrained",
              "eval.episodes", "eval.split", "eval.episodes_file"}


def config_differences(saved: Dict, current: Dict, stage: str) -> List[str]:
    """'key: checkpoint X, this run Y' for every key of the two configs (nested dicts) that a
    resumed ``stage`` must keep; the other stage's section and keys the checkpoint lacks (older
    configs) are not compared."""
    other = "meta" if stage == "pretrain" else "pretrain"
    out: List[str] = []

    def walk(a, b, prefix):
        for key in sorted(set(a) & set(b)):
            name = f"{prefix}{key}"
            if name in RESUMABLE or name.split(".")[0] == other:
                continue
            if isinstance(a[key], dict) and isinstance(b[key], dict) and name.count(".") == 0:
                walk(a[key], b[key], name + ".")
            elif a[key] != b[key]:
                out.append(f"{name}: checkpoint {a[key]!r}, this run {b[key]!r}")
    walk(saved, current, "")
    return out


def resume_path(folder: str, resume: Optional[str]) -> Optional[str]:
    if resume is None:
        return None
    path = resume or os.path.join(folder, "last.pt")
    if not os.path.isfile(path):
        if resume:
            raise FewShotError(f"--resume {path!r}: no such checkpoint")
        log(f"no checkpoint at {path}; starting from the beginning")
        return None
    return path


@dataclass
class Stage:
    """State shared by both stages."""
    name: str
    config: Config
    model: FewShotClassifier
    extra: Dict[str, nn.Module]        # modules trained beside the model (pretrain head)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    folder: str
    device: torch.device
    step: int = 0
    epoch: int = 0
    best: float = -1.0

    def state(self) -> Dict:
        return {"stage": self.name, "model": self.model.state_dict(),
                "extra": {k: v.state_dict() for k, v in self.extra.items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "step": self.step, "epoch": self.epoch, "best": self.best,
                "config": self.config.to_dict(), "rng": rng_state()}

    def restore(self, path: str) -> None:
        state = load_checkpoint(path, map_location=self.device)
        if state.get("stage") != self.name:
            raise FewShotError(f"--resume {path!r}: checkpoint is of stage {state.get('stage')!r}, "
                               f"not {self.name!r}")
        missing = [k for k in ("extra", "optimizer", "scheduler", "step", "epoch", "best", "rng")
                   if k not in state]
        if missing:
            raise FewShotError(f"--resume {path!r}: not a training checkpoint (no {', '.join(missing)})")
        differences = config_differences(state.get("config") or {}, self.config.to_dict(), self.name)
        if differences:
            raise FewShotError(f"--resume {path!r}: the checkpoint was trained with other settings "
                               f"({'; '.join(differences[:4])}{'; ...' if len(differences) > 4 else ''}); "
                               f"resume with the same settings, or train into a new --out")
        load_weights(self.model, state["model"], f"--resume {path!r}")
        for k, v in self.extra.items():
            load_weights(v, state["extra"].get(k, {}), f"--resume {path!r} ({k})")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise FewShotError(f"--resume {path!r}: the optimiser state does not fit this run: "
                               f"{first_line(e)}") from None
        self.step, self.epoch, self.best = state["step"], state["epoch"], state["best"]
        set_rng_state(state["rng"])
        log(f"[{self.name}] resumed from {path} at epoch {self.epoch}, step {self.step}")
