"""Episodic evaluation: mean accuracy +- 95% CI over fixed episodes."""
from __future__ import annotations

import sys
import time
from typing import Dict, List, Union

import torch
from tqdm import tqdm

from ..data.episodes import EpisodeSampler, ManifestSampler
from ..models.classifier import FewShotClassifier
from .metrics import accuracy, mean_confidence_interval


def progress_bars(enabled: bool) -> bool:
    """Whether to draw tqdm bars: asked for (run.progress) and stderr is a terminal; in a log
    file the bars' carriage returns would run into the log lines."""
    return bool(enabled) and sys.stderr.isatty()

Sampler = Union[EpisodeSampler, ManifestSampler]


@torch.no_grad()
def encode_images(model: FewShotClassifier, dataset, indices: List[int], device: torch.device,
                  batch_size: int = 128, progress: bool = False,
                  channels_last: bool = False) -> torch.Tensor:
    """Encode ``dataset[i]`` for i in ``indices`` -> features [len(indices), ...] on ``device``
    (images in channels-last memory format with ``channels_last``)."""
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices),
                                         batch_size=batch_size, shuffle=False)
    parts = []
    for images, _ in tqdm(loader, desc="encode", disable=not progress, leave=False):
        parts.append(model.encode(_placed(images, device, channels_last)))
    return torch.cat(parts)


def _placed(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def evaluate(model: FewShotClassifier, sampler: Sampler, n_episodes: int, device: torch.device,
             cache_features: bool = True, progress: bool = False,
             channels_last: bool = False, episodes_per_fit: int = 50) -> Dict[str, float]:
    """Accuracy over episodes ``0 .. n_episodes - 1`` of ``sampler``.

    With ``cache_features`` (and a method whose eval-mode encoding is deterministic),
    every distinct image is encoded once and episodes run on the cached features, their
    support sets fitted ``episodes_per_fit`` at a time (``model.fit_supports``: DeepEMD's
    Structured FC runs them in lockstep; the result of each is that of fitting it alone).
    Returns ``{"accuracy", "ci95", "episodes", "seconds", "encode_seconds", "episode_seconds"}``
    (accuracies in percent).
    """
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    accs: List[float] = []
    cached = cache_features and model.supports_feature_cache()
    encode_seconds = 0.0
    if cached:
        indices = [sampler.indices(i) for i in range(n_episodes)]
        distinct = sorted({j for ep in indices for j in ep.support + ep.query})
        position = {j: p for p, j in enumerate(distinct)}
        features = encode_images(model, sampler.dataset, distinct, device, progress=progress,
                                 channels_last=channels_last)
        encode_seconds = time.perf_counter() - start
        bar = tqdm(total=len(indices), desc="episodes", disable=not progress, leave=False)
        for first in range(0, len(indices), episodes_per_fit):
            group = indices[first:first + episodes_per_fit]   # support sets fitted together
            support = torch.stack([features[[position[j] for j in ep.support]] for ep in group])
            labels = torch.stack([ep.labels(len(ep.support) // ep.n_way) for ep in group]).to(device)
            for ep, prototypes in zip(group, model.fit_supports(support, labels)):
                model.prototypes = prototypes
                with torch.no_grad():
                    logits = model.score(features[[position[j] for j in ep.query]])
                accs.append(accuracy(logits, ep.labels(len(ep.query) // ep.n_way)))
            bar.update(len(group))
        bar.close()
    else:
        for i in tqdm(range(n_episodes), desc="episodes", disable=not progress, leave=False):
            ep = sampler.episode(i).to(device)
            with torch.no_grad():
                s = model.encode(_placed(ep.support_images, device, channels_last))
                q = model.encode(_placed(ep.query_images, device, channels_last))
            model.fit_support(s, ep.support_labels)
            with torch.no_grad():
                logits = model.score(q)
            accs.append(accuracy(logits, ep.query_labels))
    model.train(was_training)
    mean, ci = mean_confidence_interval(accs)
    total = time.perf_counter() - start
    return {"accuracy": mean, "ci95": ci, "episodes": len(accs), "seconds": total,
            "encode_seconds": encode_seconds, "episode_seconds": total - encode_seconds}


def format_result(result: Dict[str, float]) -> str:
    return f"{result['accuracy']:.2f} +- {result['ci95']:.2f} % ({result['episodes']} episodes)"
