"""The shipped models (``fewshot/pretrained/NAME.pt``): listing them and resolving a name or a path
to a checkpoint file. Below the engine and the API, which both resolve names through here."""
from __future__ import annotations

import os
from typing import List

from ..errors import FewShotError

PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained")


def models_available() -> List[str]:
    """Names of the models shipped in the package (``fewshot/pretrained/NAME.pt``)."""
    if not os.path.isdir(PRETRAINED_DIR):
        return []
    return sorted(f[:-3] for f in os.listdir(PRETRAINED_DIR) if f.endswith(".pt"))


def resolve_checkpoint(name_or_path: str, flag: str = "checkpoint") -> str:
    """The file of a checkpoint path or of a shipped model's name (FewShotError naming both
    possibilities when it is neither)."""
    if os.path.isfile(name_or_path):
        return name_or_path
    if name_or_path in models_available():
        return os.path.join(PRETRAINED_DIR, name_or_path + ".pt")
    shipped = ", ".join(models_available()) or "none in this version"
    raise FewShotError(f"{flag} {name_or_path!r}: no such file, and not the name of a shipped model "
                       f"(fewshot.models_available(): {shipped})")
