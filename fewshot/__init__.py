"""fewshot: few-shot image classification around DeepEMD."""
__version__ = "0.1.0"
