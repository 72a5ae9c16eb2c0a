"""fewshot: few-shot image classification around DeepEMD."""
from . import _malloc

_malloc.configure()  # before the first large tensor: keep freed activation memory mapped

__version__ = "0.1.0"

_API = ("load", "models_available", "Predictor")


def __getattr__(name):
    """``fewshot.load``, ``fewshot.models_available`` and ``fewshot.Predictor`` (fewshot.api),
    imported on first use so that ``import fewshot`` stays light."""
    if name in _API:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'fewshot' has no attribute {name!r}")
