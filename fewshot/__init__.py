"""fewshot: few-shot image classification around DeepEMD."""
from . import _malloc

__version__ = "0.1.0"

_API = ("load", "models_available", "Predictor")


def configure_allocator() -> bool:
    """Keep freed tensor memory mapped in this process (glibc's malloc: no munmap and page
    faults at the next step of an image-training loop). ``train.py``, ``eval.py``,
    ``predict.py`` and ``visualize.py`` call it first; a script of your own that trains on
    images may call it before its first large tensor. Importing ``fewshot`` does not: for work
    whose tensors change size from call to call (point clouds of different sizes, the learned
    EMD) the kept heap fragments and the process's memory grows several-fold. Returns whether
    it was applied (``FEWSHOT_MALLOC=default``, a ``MALLOC_*`` variable or a preloaded
    allocator leave glibc alone); see ``fewshot/_malloc.py``."""
    return _malloc.configure()


def __getattr__(name):
    """``fewshot.load``, ``fewshot.models_available`` and ``fewshot.Predictor`` (fewshot.api),
    imported on first use so that ``import fewshot`` stays light."""
    if name in _API:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'fewshot' has no attribute {name!r}")
