"""Atomic writes and safe checkpoint loading."""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict

import torch

from ..errors import FewShotError


def _atomic(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` to a temporary file, then rename it over ``path``."""
    _atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code is unpickled)."""
    if not os.path.isfile(path):
        raise FewShotError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any load failure is reported with the path
        raise FewShotError(f"checkpoint {path!r} could not be loaded safely: {e}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise FewShotError(f"checkpoint {path!r} is not a fewshot checkpoint (no 'model' entry)")
    return state
