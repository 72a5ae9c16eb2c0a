"""Training stages, evaluation and checkpoints."""
from .checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from .evaluate import evaluate, format_result
from .metrics import mean_confidence_interval
from .trainer import (build_model, episode_sampler, load_split, load_trained, meta_train, pretrain,
                      resolve_device)

__all__ = ["atomic_write_text", "load_checkpoint", "save_checkpoint", "evaluate", "format_result",
           "mean_confidence_interval", "build_model", "episode_sampler", "load_split", "load_trained", "meta_train",
           "pretrain", "resolve_device"]
