"""The few-shot classifier API shared by every method (after easyfsl's ``FewShotClassifier``).

A method encodes images into features, fits itself to a labelled support set and
scores queries::

    model.process_support_set(support_images, support_labels)
    logits = model(query_images)             # [n_query_total, n_way]

The split into ``encode`` / ``fit_support`` / ``score`` lets evaluation encode
each distinct image once and run many episodes on cached features.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import OptionError
from ..registry import Registry
from .backbones import Backbone

METHODS = Registry("method")


def methods() -> List[str]:
    return METHODS.names()


class FewShotClassifier(nn.Module):
    """Base class. Subclasses implement ``encode``, ``fit_support`` and ``score``.

    ``offers_matching``: the method matches query nodes to prototype nodes, and
    :func:`fewshot.viz.explain_episode` can draw that matching (DeepEMD)."""

    offers_matching = False

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone
        self.prototypes: Optional[torch.Tensor] = None   # what fit_support adapts

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Features of images [B, C_in, H, W] (layout is method specific, batch first)."""
        raise NotImplementedError

    def fit_support(self, support_features: torch.Tensor, support_labels: torch.Tensor) -> None:
        """Adapt to the support set: features [n_way * n_shot, ...], labels [n_way * n_shot]
        in 0..n_way-1 (class-major order not required)."""
        raise NotImplementedError

    def score(self, query_features: torch.Tensor) -> torch.Tensor:
        """Logits [n_query_total, n_way] for query features [n_query_total, ...]."""
        raise NotImplementedError

    def fit_supports(self, support_features: torch.Tensor, support_labels: torch.Tensor) -> List[torch.Tensor]:
        """What ``fit_support`` sets as ``prototypes``, for E episodes at once: features
        [E, n, ...], labels [E, n] -> E prototype tensors (install one with ``prototypes =``
        before ``score``). This default fits one episode after another; methods whose fit is
        costly batch it (DeepEMD's Structured FC)."""
        out = []
        for features, labels in zip(support_features, support_labels):
            self.fit_support(features, labels)
            out.append(self.prototypes)
        return out

    def process_support_set(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        self.fit_support(self.encode(support_images), support_labels)

    def forward(self, query_images: torch.Tensor) -> torch.Tensor:
        return self.score(self.encode(query_images))

    def episode_logits(self, support_images: torch.Tensor, support_labels: torch.Tensor,
                       query_images: torch.Tensor) -> torch.Tensor:
        """Encode support and query in one batch (one BatchNorm pass), fit, score."""
        n = support_images.shape[0]
        features = self.encode(torch.cat([support_images, query_images]))
        self.fit_support(features[:n], support_labels)
        return self.score(features[n:])

    def supports_feature_cache(self) -> bool:
        """True when ``encode`` is deterministic in eval mode (features may be cached)."""
        return True


def class_means(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-class mean of features [n, ...] with labels [n] in 0..n_way-1 -> [n_way, ...]."""
    n_way = int(labels.max()) + 1
    flat = features.reshape(features.shape[0], -1)
    sums = torch.zeros(n_way, flat.shape[1], dtype=flat.dtype, device=flat.device)
    sums.index_add_(0, labels, flat)
    counts = torch.bincount(labels, minlength=n_way).to(flat.dtype).unsqueeze(1)
    return (sums / counts).reshape(n_way, *features.shape[1:])


@METHODS.register("protonet")
class ProtoNet(FewShotClassifier):
    """Prototypical Networks (Snell et al. 2017): logits = -squared Euclidean distance
    between pooled query features and class-mean prototypes.

    ``normalize``: ``none``, or ``l2n``: features L2-normalised before the class means and
    distances (the nearest-centroid baseline of SimpleShot, Wang et al. 2019, "L2N")."""

    def __init__(self, backbone: Backbone, normalize: str = "none"):
        super().__init__(backbone)
        if normalize not in ("none", "l2n"):
            raise OptionError("normalize", f"{normalize!r} is not one of none, l2n")
        self.normalize = normalize
        self.prototypes = None

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        return F.normalize(features, dim=1) if self.normalize == "l2n" else features

    def fit_support(self, support_features: torch.Tensor, support_labels: torch.Tensor) -> None:
        self.prototypes = class_means(support_features, support_labels)

    def score(self, query_features: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(query_features, self.prototypes).pow(2)


class CosineClassifier(nn.Module):
    """Scaled cosine-similarity head (Gidaris & Komodakis 2018; Chen et al. 2019's
    Baseline++): logits [B, n_classes] = scale * cos(features [B, C], class weights)."""

    def __init__(self, in_features: int, n_classes: int, scale: float = 10.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, in_features) / in_features ** 0.5)
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))
