"""Keep freed heap memory in the process (glibc only), set by the entry points (``fewshot.configure_allocator``).

By default glibc's malloc serves every allocation above 128 KB-32 MB (its adaptive
mmap threshold) with a fresh ``mmap`` and unmaps it on free, and trims the heap top back
to the OS. A training step allocates and frees the same activation buffers every step,
so each step pays page faults and zeroing for memory it just gave back: on a 2-core CPU
that system time was over half of a Conv-4 pretraining step (``benchmarks/throughput.py``).
``M_MMAP_MAX = 0`` (serve large blocks from the heap) and a trim threshold of 100 GB
(never give the heap top back) keep those pages mapped from one step to the next; the
process's peak memory stays its high-water mark, which the benchmark reports.

Left alone when the user chose an allocator already: ``MALLOC_MMAP_MAX_`` or
``MALLOC_TRIM_THRESHOLD_`` in the environment, jemalloc/tcmalloc/mimalloc preloaded, or
``FEWSHOT_MALLOC=default``. Not glibc (macOS, musl, Windows): nothing to do.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 100_000_000_000

_state = {"applied": False, "reason": "not configured"}


def configure() -> bool:
    """Apply the setting to this process (and processes forked from it). Returns whether
    it was applied; :func:`status` says why not."""
    reason = _skip_reason()
    if reason is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            reason = "applied: M_MMAP_MAX=0, M_TRIM_THRESHOLD=1e11" if ok else "mallopt refused"
        except (OSError, AttributeError) as e:
            ok, reason = False, f"mallopt unavailable ({e})"
    else:
        ok = False
    _state.update(applied=ok, reason=reason)
    return ok


def status() -> str:
    """One line: what :func:`configure` did."""
    return _state["reason"]


def _skip_reason():
    if os.environ.get("FEWSHOT_MALLOC", "").lower() == "default":
        return "left as is: FEWSHOT_MALLOC=default"
    for var in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"):
        if var in os.environ:
            return f"left as is: {var} is set"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return "left as is: another allocator is preloaded"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "left as is: not glibc"
    return None
