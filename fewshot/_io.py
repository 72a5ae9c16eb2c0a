"""Atomic file writes and safe checkpoint loading (used by every layer; imports no other
part of the package but the error types).

Writes go to a hidden temporary file ``.NAME.XXXX.tmp`` in the target's folder, which is
renamed over the target once complete, so a reader (or a run resumed after a kill) sees
the old file or the new one, never half of one. A kill during a write can leave the
temporary file behind; :func:`remove_stale_temporaries` deletes those of a folder.
"""
from __future__ import annotations

import glob
import os
import tempfile
from typing import Any, Dict

import torch

from .errors import FewShotError

_SUFFIX = ".tmp"


def _atomic(path: str, write, place=None) -> str:
    """Write with ``write(file)`` to a hidden temporary file beside ``path``, flushed to disk, then
    ``place(tmp)`` puts it at its destination and returns the path it took (default: renamed over
    ``path``). The temporary file never outlives the call; OSError -> FewShotError naming ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=_SUFFIX, dir=folder)
    except OSError as e:
        raise FewShotError(f"cannot write {path!r}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        if place is None:
            os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file
            return path
        return place(tmp)
    except OSError as e:
        raise FewShotError(f"cannot write {path!r}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_temporaries(folder: str) -> int:
    """Delete the temporary files an interrupted atomic write left in ``folder``; returns
    how many. Call it only where no other process is writing to ``folder``."""
    removed = 0
    for tmp in glob.glob(os.path.join(glob.escape(folder), "." + "*" + _SUFFIX)):
        try:
            os.unlink(tmp)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def read_text(path: str, what: str) -> str:
    """The UTF-8 text of a data file (a BOM is dropped); DataError naming ``what`` and ``path``
    when the file is not UTF-8 (UTF-16, as some spreadsheet programs save, named as such)."""
    from .errors import DataError
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError(f"{what} {path!r} is UTF-16 text; save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {path!r} is not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}); "
                        f"save it as UTF-8") from None


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (FewShotError naming the path if it cannot be)."""
    _atomic(path, lambda f: f.write(text.encode()))


def write_new_text(path: str, text: str, numbered: bool = False) -> str:
    """Write ``text`` to a file that does not exist yet, atomically and exclusively: written to a
    temporary file, then hard-linked to ``path``, which fails if another writer got there first.
    ``numbered``: then ``STEM_2.EXT``, ``STEM_3.EXT``, ... are tried, so concurrent writers each
    keep their result; else FewShotError. Returns the path written."""
    stem, ext = os.path.splitext(path)

    def link(tmp: str) -> str:
        target, k = path, 2
        while True:
            try:
                os.link(tmp, target)
                return target
            except FileExistsError:
                if not numbered:
                    raise FewShotError(f"{path!r} already exists; an output never replaces a file: "
                                       f"choose another path") from None
                target, k = f"{stem}_{k}{ext}", k + 1
    return _atomic(path, lambda f: f.write(text.encode()), link)


def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` to a temporary file, then rename it over ``path``."""
    _atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code is unpickled).

    FewShotError naming ``path`` when it is missing, empty, not a torch checkpoint, not a
    fewshot checkpoint (a dict with a ``model`` state dict) or holds non-finite weights."""
    if not os.path.isfile(path):
        raise FewShotError(f"checkpoint {path!r} does not exist")
    if os.path.getsize(path) == 0:
        raise FewShotError(f"checkpoint {path!r} is empty (0 bytes); it was not written completely")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04" and head[:1] != b"\x80":   # zip (torch.save) or legacy pickle
        raise FewShotError(f"checkpoint {path!r} could not be loaded: it is not a file written by "
                           f"torch.save (it starts with {head!r})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any load failure is reported with the path
        lines = str(e).strip().splitlines()
        reason = lines[-1] if lines else type(e).__name__
        if "weights_only" in str(e) or "Unpickler" in str(e):
            reason = "it holds objects other than tensors and plain values"
        elif head == b"PK\x03\x04" or "zip" in str(e).lower() or "central directory" in str(e).lower():
            reason = "the file is truncated or damaged (a torch.save archive that does not read to its end)"
        raise FewShotError(f"checkpoint {path!r} could not be loaded: {reason}") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise FewShotError(f"checkpoint {path!r} is not a fewshot checkpoint (no 'model' state dict)")
    for key, value in state["model"].items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise FewShotError(f"checkpoint {path!r}: weight {key!r} contains NaN or infinite values")
    return state


_LOCKS: Dict[str, Any] = {}   # real path of a run folder -> the open lock file this process holds


def lock_folder(folder: str) -> None:
    """Hold an exclusive lock on ``folder`` (its ``.lock`` file) until :func:`release_folders`:
    a second run writing into the same folder is refused (FewShotError naming the folder and the
    other process) instead of interleaving its checkpoints and logs or deleting the other's
    temporaries. The lock dies with the process, so a killed run can be resumed at once. No-op
    where ``fcntl`` is missing (Windows)."""
    try:
        import fcntl
    except ImportError:                      # pragma: no cover
        return
    key = os.path.realpath(folder)
    if key in _LOCKS:
        return
    os.makedirs(folder, exist_ok=True)
    f = open(os.path.join(folder, ".lock"), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        other = f.read().strip() or "unknown"
        f.close()
        raise FewShotError(f"--out {folder!r} is in use by another run (process {other}); wait for it to "
                           f"finish or train into another --out") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _LOCKS[key] = f


def release_folders() -> None:
    """Release every folder lock this process holds."""
    while _LOCKS:
        _, f = _LOCKS.popitem()
        f.close()
