"""Few-shot classification of your own images with a trained model, in the style of sklearn
(``fit`` / ``predict`` / ``predict_proba``) and easyfsl (``process_support_set`` + ``forward``)::

    import fewshot
    clf = fewshot.load("runs/mini_cpu/meta/best.pt")          # a checkpoint, or a shipped model's name
    clf.fit(support_images, ["cat", "cat", "dog", "dog", "owl"])
    clf.predict(query_images)                                 # ["dog", ...]
    clf.predict_proba(query_images)                           # [n_query, n_classes], rows sum to 1

Images are PIL images, file paths, tensors [C, H, W] or NumPy arrays [H, W] / [H, W, C] (uint8,
or float in [0, 1]; a batch as a list, a tensor [N, C, H, W] or an array [N, H, W, C]); any size and
mode. ``fit("folder/")`` takes one sub-folder of images per class, ``score(images, labels)`` the
accuracy. Each is converted to the model's channels (RGB or grey; 16-bit images scaled to 8 bits) and
prepared as evaluation prepares images (the checkpoint's ``data.transform`` at its
``data.image_size``: for ``deepemd``, resized to 92/84 of the size without keeping the aspect
ratio, centre-cropped to the size and normalised). With several images per class the method fits
as in evaluation (DeepEMD: Structured FC prototypes); the probabilities are the softmax of the
method's logits.
"""
from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence

import torch

from .errors import DataError, FewShotError

from .models.hub import PRETRAINED_DIR, models_available, resolve_checkpoint  # noqa: F401  (re-exported)


class Predictor:
    """A trained few-shot model fitted to a support set of your images; see the module docstring.

    ``classes_``: the class labels of the support set, in the order of ``predict_proba``'s columns."""

    def __init__(self, model, config, source: str):
        self.model, self.config, self.source = model.eval(), config, source
        self.device = next(model.parameters()).device
        from .data.transforms import build_transform, image_mode
        self._transform = build_transform(config.data.transform, config.data.image_size, train=False)
        self._mode = image_mode(config.data.transform)
        self.classes_: List[Any] = []

    def __repr__(self) -> str:
        shown = self.classes_[:5] + (["..."] if len(self.classes_) > 5 else [])
        return (f"Predictor({self.source!r}: {self.config.model.method}/{self.config.model.backbone}, "
                f"{self.config.data.image_size} px, on {self.device}; "
                + (f"fitted to {len(self.classes_)} classes {shown})" if self.classes_ else "not fitted)"))

    def _batch(self, images: Sequence[Any], what: str) -> torch.Tensor:
        """Images -> the model's input batch [N, C, S, S] on its device."""
        import numpy as np
        from PIL import Image
        from torchvision.transforms.functional import to_pil_image

        from .data._image import _to_8bit, load_image
        if isinstance(images, (str, os.PathLike, Image.Image)) or (
                isinstance(images, torch.Tensor) and images.dim() == 3) or (
                isinstance(images, np.ndarray) and (images.ndim == 2 or (images.ndim == 3 and images.shape[2] in (1, 3, 4)))):
            images = [images]
        out = []
        for i, img in enumerate(images):
            if isinstance(img, np.ndarray):                  # [H, W] or [H, W, C], channels last
                if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
                    raise DataError(f"{what} image {i}: expected an array [H, W] or [H, W, C] with C = 1, 3 "
                                    f"or 4, got shape {img.shape}")
                if img.dtype.kind == "f":
                    if not (np.isfinite(img).all() and img.min() >= 0 and img.max() <= 1):
                        raise DataError(f"{what} image {i}: a float image array must hold values in [0, 1]")
                    img = np.rint(img * 255)
                elif img.dtype.kind not in "ub" or (img.dtype.kind == "u" and img.dtype.itemsize > 1):
                    raise DataError(f"{what} image {i}: expected a uint8 or float array, got {img.dtype}")
                arr = img.astype(np.uint8)
                img = Image.fromarray(arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)
            if isinstance(img, (str, os.PathLike)):
                img = load_image(os.fspath(img), self._mode)
            elif isinstance(img, torch.Tensor):
                if img.dim() != 3 or img.shape[0] not in (1, 3, 4):
                    raise DataError(f"{what} image {i}: expected a tensor [C, H, W] with C = 1, 3 or 4, "
                                    f"got {tuple(img.shape)}")
                if img.is_floating_point() and not (0 <= float(img.min()) and float(img.max()) <= 1):
                    raise DataError(f"{what} image {i}: a float image tensor must hold values in [0, 1]")
                img = to_pil_image(img.detach().cpu())
            elif not isinstance(img, Image.Image):
                raise DataError(f"{what} image {i}: expected a PIL image, a file path, a tensor [C, H, W] "
                                f"or an array [H, W, C], got {type(img).__name__}")
            out.append(self._transform(_to_8bit(img).convert(self._mode)))
        if not out:
            raise DataError(f"{what}: no images")
        return torch.stack(out).to(self.device)

    @torch.no_grad()
    def fit(self, images: Any, labels: Optional[Sequence[Any]] = None) -> "Predictor":
        """Fit to support images with their labels (any hashable values; at least 2 classes), or
        to a folder with one sub-folder of images per class (``labels`` None: the folder names)."""
        if isinstance(images, (str, os.PathLike)) and os.path.isdir(images):
            if labels is not None:
                raise DataError(f"support: a folder ({os.fspath(images)!r}) labels its images by its "
                                f"sub-folders; pass no labels")
            images, labels = support_folder(os.fspath(images))
        if labels is None:
            raise DataError("support: labels are needed unless the images are a folder of class folders")
        labels = list(labels)
        batch = self._batch(images, "support")
        if len(labels) != len(batch):
            raise DataError(f"support: {len(batch)} images but {len(labels)} labels")
        classes = list(dict.fromkeys(labels))
        if len(classes) < 2:
            raise DataError(f"support: needs images of at least 2 classes, got {len(classes)} ({classes})")
        self.classes_ = classes
        index = torch.tensor([classes.index(x) for x in labels], device=self.device)
        self.model.process_support_set(batch, index)
        self._support = (batch, index)
        return self

    @torch.no_grad()
    def explain(self, images: Sequence[Any], top_flows: int = 10):
        """What a DeepEMD model matched for each query image: ``(explanations, episode)`` for
        :func:`fewshot.viz.draw` (the query labels are unknown, -1: each query is drawn against
        the support image of its predicted class)."""
        from .data.episodes import Episode
        from .viz import explain_episode
        if not self.classes_:
            raise FewShotError("fit(support images, labels) before explaining queries")
        if not self.model.offers_matching:
            raise FewShotError(f"{self.source}: a {type(self.model).__name__} model has no matching to "
                               f"draw (only DeepEMD models do)")
        support, index = self._support
        query = self._batch(images, "query")
        episode = Episode(support, index, query, torch.full((len(query),), -1, device=self.device),
                          [str(c) for c in self.classes_], None)
        return explain_episode(self.model, episode, top_flows_per_class=top_flows), episode

    @torch.no_grad()
    def logits(self, images: Sequence[Any]) -> torch.Tensor:
        """The method's logits [n_query, n_classes] of query images."""
        if not self.classes_:
            raise FewShotError("fit(support images, labels) before scoring queries")
        return self.model(self._batch(images, "query")).float()

    def predict_proba(self, images: Sequence[Any]) -> torch.Tensor:
        """Class probabilities [n_query, n_classes] (softmax of the logits), columns in ``classes_``."""
        return self.logits(images).softmax(-1).cpu()

    def predict(self, images: Sequence[Any]) -> List[Any]:
        """The most probable class label of each query image."""
        return [self.classes_[int(i)] for i in self.logits(images).argmax(-1)]

    def score(self, images: Sequence[Any], labels: Sequence[Any]) -> float:
        """Accuracy (fraction correct, as sklearn's ``score``) of ``predict(images)`` against
        ``labels``, which must be classes of the support set."""
        labels = list(labels)
        unknown = [x for x in dict.fromkeys(labels) if x not in self.classes_]
        if unknown:
            raise DataError(f"score: labels {unknown[:3]} are not classes of the support set {self.classes_}")
        predicted = self.predict(images)
        if len(predicted) != len(labels):
            raise DataError(f"score: {len(predicted)} images but {len(labels)} labels")
        return sum(p == t for p, t in zip(predicted, labels)) / len(labels)


def support_folder(folder: str):
    """(image files, labels) of a folder with one sub-folder of images per class (the label is
    the sub-folder's name); DataError naming the folder when it has fewer than 2 class folders
    or a class folder has no images."""
    from .data.datasets import class_folder_images
    names, files = class_folder_images(folder, "support folder")
    return [f for found in files for f in found], [c for c, found in zip(names, files) for _ in found]


def load(name_or_path: str, device: str = "cpu") -> Predictor:
    """A :class:`Predictor` for a checkpoint written by train.py, or a shipped model's name
    (:func:`models_available`)."""
    from .engine import load_trained
    path = resolve_checkpoint(name_or_path)
    config, model = load_trained(path, device=device)
    return Predictor(model, config, name_or_path)      # as given: the file, or the shipped name
