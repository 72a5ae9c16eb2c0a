"""A procedurally generated few-shot dataset (the embedded default for ``make demo``).

100 classes, each a (shape, colour, texture) combination, drawn at 84 x 84 with random
position, size, rotation, background and colour jitter. Written once, in the
split-folder layout (``train/`` 64, ``val/`` 16, ``test/`` 20 classes), to a cache
folder; the ``folder`` dataset reads it. The classes of the three splits are
disjoint, so accuracy on ``test`` measures generalisation to unseen classes.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw

VERSION = 1
SHAPES = ["circle", "square", "triangle", "diamond", "star", "cross", "ring", "hexagon",
          "bar", "arrow"]
COLOURS = [(220, 40, 40), (40, 170, 60), (40, 80, 220), (230, 200, 30), (200, 60, 200),
           (30, 200, 210), (240, 130, 20), (120, 70, 30), (250, 250, 250), (20, 20, 20)]
TEXTURES = ["solid", "stripes", "dots", "checker"]
SPLITS = (("train", 64), ("val", 16), ("test", 20))


def default_root() -> str:
    base = os.environ.get("FEWSHOT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "fewshot"))
    return os.path.join(base, f"synthetic-v{VERSION}")


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float):
    def ring(n, radii):
        pts = []
        for k in range(n * len(radii)):
            t = angle + 2 * math.pi * k / (n * len(radii))
            rad = radii[k % len(radii)] * r
            pts.append((cx + rad * math.cos(t), cy + rad * math.sin(t)))
        return pts

    if shape == "square":
        return ring(4, [1.0])
    if shape == "triangle":
        return ring(3, [1.0])
    if shape == "diamond":
        return ring(2, [1.0, 0.5])
    if shape == "star":
        return ring(5, [1.0, 0.42])
    if shape == "hexagon":
        return ring(6, [1.0])
    if shape == "cross":
        return ring(4, [1.0, 0.35, 0.35])
    if shape == "bar":
        return ring(2, [1.0, 0.3])
    if shape == "arrow":
        return ring(3, [1.0, 0.25, 0.25])
    raise ValueError(shape)


def _texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A [size, size] mask in {0.55, 1} modulating the shape colour."""
    yy, xx = np.mgrid[0:size, 0:size]
    period = rng.integers(6, 11)
    phase = rng.integers(0, period)
    if kind == "solid":
        m = np.ones((size, size))
    elif kind == "stripes":
        m = ((xx + yy + phase) // (period // 2)) % 2
    elif kind == "dots":
        m = 1 - ((((xx + phase) % period) - period / 2) ** 2 + (((yy + phase) % period) - period / 2) ** 2
                 < (period / 3.2) ** 2)
    else:
        m = (((xx + phase) // period) + ((yy + phase) // period)) % 2
    return np.where(m > 0, 1.0, 0.55)


def render(shape: str, colour, texture: str, rng: np.random.Generator, size: int = 84) -> Image.Image:
    """One random instance of class (shape, colour, texture)."""
    bg = rng.integers(60, 200, size=3)
    img = np.ones((size, size, 3)) * bg + rng.normal(0, 12, size=(size, size, 3))
    r = rng.uniform(0.22, 0.38) * size
    cx, cy = rng.uniform(r, size - r, size=2)
    mask_img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask_img)
    angle = rng.uniform(0, 2 * math.pi)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        draw.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=0)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=255)
    mask = np.asarray(mask_img, dtype=np.float64)[..., None] / 255.0
    jitter = rng.normal(0, 12, size=3)
    fg = np.clip(np.asarray(colour) + jitter, 0, 255) * _texture(texture, size, rng)[..., None]
    img = img * (1 - mask) + fg * mask
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def class_table(seed: int = 0):
    """The 100 (shape, colour, texture) classes in split order (train, val, test)."""
    rng = np.random.default_rng(seed)
    combos = [(s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS))]
    order = rng.permutation(len(combos))
    return [(SHAPES[combos[i][0]], COLOURS[combos[i][1]], TEXTURES[rng.integers(len(TEXTURES))])
            for i in order]


def generate(root: str = "", images_per_class: int = 40, seed: int = 0, size: int = 84) -> str:
    """Write the dataset to ``root`` (default: the cache folder) unless it is already there."""
    root = root or default_root()
    if os.path.isfile(os.path.join(root, "DONE")):
        return root
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".synthetic-", dir=parent)
    table = class_table(seed)
    rng = np.random.default_rng(seed + 1)
    k = 0
    for split, count in SPLITS:
        for shape, colour, texture in table[k:k + count]:
            name = f"{shape}-{'_'.join(map(str, colour))}-{texture}"
            folder = os.path.join(tmp, split, name)
            os.makedirs(folder)
            for j in range(images_per_class):
                render(shape, colour, texture, rng, size).save(os.path.join(folder, f"{j:03d}.png"))
        k += count
    with open(os.path.join(tmp, "DONE"), "w") as f:
        f.write(f"synthetic few-shot dataset v{VERSION}, seed {seed}\n")
    if os.path.isdir(root):
        shutil.rmtree(root)
    os.replace(tmp, root)
    return root
