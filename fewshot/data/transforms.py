"""torchvision transforms; the DeepEMD recipe is the default for natural images."""
from __future__ import annotations

from typing import Callable, Tuple

from torchvision import transforms as T

from ..errors import OptionError
from .augment import BatchAugment

# Normalisation used by DeepEMD / FEAT for miniImageNet, CUB and tieredImageNet.
MEAN = (125.3 / 255.0, 123.0 / 255.0, 113.9 / 255.0)
STD = (63.0 / 255.0, 62.1 / 255.0, 66.7 / 255.0)


def image_mode(kind: str) -> str:
    """The PIL mode the transform ``kind`` feeds the backbone: "L" (1 channel) for
    ``grayscale``, else "RGB" (3 channels)."""
    return "L" if kind == "grayscale" else "RGB"


def build_transform(kind: str = "deepemd", image_size: int = 84, train: bool = False,
                    on_device: bool = False, crop_scale: Tuple[float, float] = (0.08, 1.0)) -> Callable:
    """Return the transform for one split (errors name the data options ``transform`` and
    ``gpu_augment`` that ``kind`` and ``on_device`` come from).

    With ``on_device`` (train only; ``deepemd`` only) images are only decoded, to uint8
    [C, image_size, image_size], and :func:`device_augment` augments whole batches on
    the device.

    ``deepemd``: train = RandomResizedCrop(size, scale=crop_scale) + horizontal flip; test = Resize to
    size * 92/84 then CentreCrop(size) (92 -> 84 at the default size); both normalised.
    ``plain``: Resize(size) + normalisation (no augmentation).
    ``grayscale``: single channel, Resize(size), values in [0, 1] (Omniglot).
    """
    if on_device:
        if kind != "deepemd" or not train:
            raise OptionError("gpu_augment", f"applies to the training split of transform 'deepemd'; "
                                             f"the transform is {kind!r}")
        return T.Compose([T.Resize([image_size, image_size]), T.PILToTensor()])
    if kind == "deepemd":
        normalize = T.Normalize(MEAN, STD)
        if train:
            return T.Compose([T.RandomResizedCrop(image_size, scale=tuple(crop_scale)), T.RandomHorizontalFlip(),
                              T.ToTensor(), normalize])
        resize = round(image_size * 92 / 84)
        return T.Compose([T.Resize([resize, resize]), T.CenterCrop(image_size),
                          T.ToTensor(), normalize])
    if kind == "plain":
        return T.Compose([T.Resize([image_size, image_size]), T.ToTensor(), T.Normalize(MEAN, STD)])
    if kind == "grayscale":
        return T.Compose([T.Grayscale(1), T.Resize([image_size, image_size]), T.ToTensor()])
    raise OptionError("transform", f"unknown transform {kind!r}; expected deepemd, plain or grayscale")


def device_augment(image_size: int = 84, crop_scale: Tuple[float, float] = (0.08, 1.0)) -> BatchAugment:
    """The ``deepemd`` training augmentation for batches on the device (``data.gpu_augment``)."""
    return BatchAugment(image_size, MEAN, STD, scale=tuple(crop_scale))
