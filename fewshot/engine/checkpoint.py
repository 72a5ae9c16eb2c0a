"""Atomic writes and safe checkpoint loading (defined in :mod:`fewshot._io`)."""
from .._io import atomic_write_text, load_checkpoint, remove_stale_temporaries, save_checkpoint

__all__ = ["atomic_write_text", "load_checkpoint", "remove_stale_temporaries", "save_checkpoint"]
