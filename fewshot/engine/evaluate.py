"""Episodic evaluation: mean accuracy +- 95% CI over fixed episodes."""
from __future__ import annotations

import sys
import time
from typing import Dict, Iterator, List, Tuple, Union

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
    encode_seconds, groups = _episode_groups(model, sampler, n_episodes, device,
                                             cache_features and model.supports_feature_cache(),
                                             progress, channels_last, episodes_per_fit)
    bar = tqdm(total=n_episodes, desc="episodes", disable=not progress, leave=False)
    for support, labels, queries in groups:
        for (query, query_labels), prototypes in zip(queries, model.fit_supports(support, labels)):
            model.prototypes = prototypes
            with torch.no_grad():
                accs.append(accuracy(model.score(query), query_labels))
        bar.update(len(queries))
    bar.close()
    model.train(was_training)
    mean, ci = mean_confidence_interval(accs)
    total = time.perf_counter() - start
    return {"accuracy": mean, "ci95": ci, "episodes": len(accs), "seconds": total,
            "encode_seconds": encode_seconds, "episode_seconds": total - encode_seconds}


def _episode_groups(model: FewShotClassifier, sampler: Sampler, n_episodes: int, device: torch.device,
                    cached: bool, progress: bool, channels_last: bool,
                    episodes_per_fit: int) -> Tuple[float, Iterator[Tuple[torch.Tensor, torch.Tensor, list]]]:
    """The seconds spent encoding up front and the episodes as groups whose support sets are
    fitted together: (support features [E, n, ...], support labels [E, n], E pairs (query
    features [q, ...], query labels [q])). ``cached``: every distinct image encoded once, here,
    groups of ``episodes_per_fit``; else each episode's images encoded as it comes, one per group."""
    if not cached:
        def one_by_one():
            for i in range(n_episodes):
                ep = sampler.episode(i).to(device)
                with torch.no_grad():
                    support = model.encode(_placed(ep.support_images, device, channels_last))
                    query = model.encode(_placed(ep.query_images, device, channels_last))
                yield support[None], ep.support_labels[None], [(query, ep.query_labels)]
        return 0.0, one_by_one()
    start = time.perf_counter()
    indices = [sampler.indices(i) for i in range(n_episodes)]
    distinct = sorted({j for ep in indices for j in ep.support + ep.query})
    position = {j: p for p, j in enumerate(distinct)}
    features = encode_images(model, sampler.dataset, distinct, device, progress=progress,
                             channels_last=channels_last)

    def grouped():
        for first in range(0, len(indices), episodes_per_fit):
            group = indices[first:first + episodes_per_fit]
            support = torch.stack([features[[position[j] for j in ep.support]] for ep in group])
            labels = torch.stack([ep.labels(len(ep.support) // ep.n_way) for ep in group]).to(device)
            yield support, labels, [(features[[position[j] for j in ep.query]],
                                     ep.labels(len(ep.query) // ep.n_way)) for ep in group]
    return time.perf_counter() - start, grouped()


def format_result(result: Dict[str, float]) -> str:
    return f"{result['accuracy']:.2f} +- {result['ci95']:.2f} % ({result['episodes']} episodes)"
