"""Training augmentation on a batch that already lies on the device (``data.gpu_augment``).

The DataLoader then only decodes: each image arrives as uint8 [C, S, S] (S =
``data.image_size``), four times smaller than float pixels to pin and copy. On the
device, one ``grid_sample`` call per batch does what torchvision's per-image
``RandomResizedCrop`` + ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize`` do:

  * crop boxes are drawn like ``RandomResizedCrop.get_params`` (area fraction uniform in
    ``scale``, log aspect ratio uniform in ``log(ratio)``, up to 10 tries, else the
    largest centred box with a clamped ratio), vectorised over the batch;
  * each box is resampled bilinearly to size x size exactly as
    ``torchvision.transforms.functional.resized_crop(..., antialias=False)`` does;
  * half of the images (each with probability 1/2) are mirrored; pixels are divided by
    255 and normalised by ``mean`` and ``std``.

The boxes and flips are drawn on the CPU from an explicit ``torch.Generator`` (a few
numbers per image), so a seed gives the same augmentation on every device.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


def sample_boxes(n: int, height: int, width: int, generator: torch.Generator,
                 scale: Tuple[float, float] = (0.08, 1.0),
                 ratio: Tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10) -> torch.Tensor:
    """Crop boxes [n, 4] as (top, left, height, width) in whole pixels, drawn like
    ``torchvision.transforms.RandomResizedCrop.get_params`` for an image height x width."""
    area = height * width
    u = torch.rand(4, n, attempts, generator=generator, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1]
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.to(torch.int8).argmax(1), torch.full((n,), -1))
    # fallback: the whole image cropped to the nearest allowed aspect ratio, centred
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = height, int(round(height * max(ratio)))
    else:
        fw, fh = width, height
    rows = torch.arange(n)
    pick = first.clamp_min(0)
    bh = torch.where(first >= 0, h[rows, pick], torch.full((n,), float(fh), dtype=torch.float64))
    bw = torch.where(first >= 0, w[rows, pick], torch.full((n,), float(fw), dtype=torch.float64))
    top = torch.floor(u[2][rows, pick] * (height - bh + 1))
    left = torch.floor(u[3][rows, pick] * (width - bw + 1))
    top = torch.where(first >= 0, top, torch.floor((height - bh) / 2))
    left = torch.where(first >= 0, left, torch.floor((width - bw) / 2))
    return torch.stack([top, left, bh, bw], 1).long()


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, size: int,
                  flip: torch.Tensor) -> torch.Tensor:
    """Crop and resample images [B, C, H, W] (any dtype) to float [B, C, size, size].

    boxes: [B, 4] (top, left, height, width) in pixels; flip: [B] bool, mirror that output.
    Bilinear with half-pixel centres and source coordinates clamped to the box, i.e.
    ``resized_crop(image, top, left, height, width, [size, size], antialias=False)``."""
    B, _, H, W = images.shape
    dev = images.device
    dtype = images.dtype if images.is_floating_point() else torch.float32
    boxes = boxes.to(device=dev, dtype=dtype)
    top, left, bh, bw = boxes.unbind(1)
    steps = torch.arange(size, device=dev, dtype=dtype) + 0.5
    ys = (top[:, None] + (steps * (bh[:, None] / size) - 0.5).clamp_min(0)
          .minimum(bh[:, None] - 1))                                     # [B, size]
    xs = (left[:, None] + (steps * (bw[:, None] / size) - 0.5).clamp_min(0)
          .minimum(bw[:, None] - 1))
    xs = torch.where(flip.to(dev)[:, None], xs.flip(1), xs)
    gy = (2 * ys + 1) / H - 1
    gx = (2 * xs + 1) / W - 1
    grid = torch.stack([gx[:, None, :].expand(B, size, size), gy[:, :, None].expand(B, size, size)], -1)
    return F.grid_sample(images.to(dtype), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


class BatchAugment:
    """RandomResizedCrop(size, scale, ratio) + horizontal flip + normalisation of a batch.

    Args:
        size: output side length.
        mean, std: per-channel normalisation of pixels scaled to [0, 1].
        scale, ratio: as in ``torchvision.transforms.RandomResizedCrop``.
        flip: mirror each image with probability 1/2.

    ``augment(images, generator, size=None)``: images uint8 (or float in 0..255)
    [B, C, H, W] on any device -> float32 [B, C, s, s] on that device, s = ``size`` or the
    constructor's (progressive resizing draws the same boxes at any output size).
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float],
                 scale: Tuple[float, float] = (0.08, 1.0), ratio: Tuple[float, float] = (3 / 4, 4 / 3),
                 flip: bool = True):
        if len(mean) != len(std):
            raise ValueError(f"mean ({len(mean)} values) and std ({len(std)} values) differ in length")
        self.size, self.scale, self.ratio, self.flip = size, tuple(scale), tuple(ratio), flip
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)

    def __call__(self, images: torch.Tensor, generator: torch.Generator,
                 size: Optional[int] = None) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != len(self.mean):
            raise ValueError(f"images must have shape [B, {len(self.mean)}, H, W], "
                             f"got {tuple(images.shape)}")
        B, _, H, W = images.shape
        boxes = sample_boxes(B, H, W, generator, self.scale, self.ratio)
        flip = (torch.rand(B, generator=generator) < 0.5) if self.flip else torch.zeros(B, dtype=torch.bool)
        out = resized_crops(images, boxes, size or self.size, flip)
        mean = self.mean.to(out.device)[:, None, None] * 255
        std = self.std.to(out.device)[:, None, None] * 255
        return (out - mean) / std
