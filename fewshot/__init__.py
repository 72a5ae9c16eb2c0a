"""fewshot: few-shot image classification around DeepEMD."""
from . import _malloc

_malloc.configure()  # before the first large tensor: keep freed activation memory mapped

__version__ = "0.1.0"
