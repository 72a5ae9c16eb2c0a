"""ModelNet40 point clouds in the layouts users have, for the learned EMD and point-cloud losses.

Layouts (``layout="auto"`` recognises each under ``root``):

- ``npy``: ``ModelNet40/<class>/<split>/<class>_NNNN.npy``, one float array [P, 3] per shape
  (the layout of public PointNet code; ``root`` may be the ``ModelNet40`` folder itself);
- ``hdf5``: ``modelnet40_ply_hdf5_2048``: ``ply_data_<split>N.h5`` files with ``data``
  [S, 2048, 3] and ``label`` [S] or [S, 1], class names in ``shape_names.txt``;
- ``text``: ``modelnet40_normal_resampled``: ``<class>/<class>_NNNN.txt`` with comma-separated
  ``x,y,z,nx,ny,nz`` rows, the shapes of a split in ``modelnet40_<split>.txt`` and the class
  names in ``modelnet40_shape_names.txt`` (normals are dropped).

Every cloud is checked when read (a file that cannot be read, a shape that is not [P, >= 3],
non-finite coordinates, fewer points than asked for: a DataError naming the file) and, with
``normalize``, moved to the unit sphere (centroid at the origin, largest radius 1).
"""
from __future__ import annotations

import glob
import math
import os
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..errors import DataError

LAYOUTS = ("npy", "hdf5", "text")


@dataclass
class PointClouds:
    """points [S, P, 3] float32; labels [S] int64 into ``classes``; names: one id per shape
    (its file name, or ``file.h5:index``)."""
    points: torch.Tensor
    labels: torch.Tensor
    classes: List[str]
    names: List[str]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index: Sequence[int]) -> "PointClouds":
        index = torch.as_tensor(list(index), dtype=torch.long)
        return PointClouds(self.points[index], self.labels[index], self.classes,
                           [self.names[i] for i in index.tolist()])

    def of_classes(self, classes: Sequence[str]) -> "PointClouds":
        """The shapes of ``classes`` (labels keep indexing ``self.classes``)."""
        unknown = [c for c in classes if c not in self.classes]
        if unknown:
            raise DataError(f"classes {unknown} are not in this dataset ({len(self.classes)} classes, "
                            f"e.g. {self.classes[:3]})")
        keep = {self.classes.index(c) for c in classes}
        return self.subset([i for i, y in enumerate(self.labels.tolist()) if y in keep])


def normalize_unit_sphere(points: torch.Tensor) -> torch.Tensor:
    """Clouds [..., P, 3] with the centroid at the origin and the largest radius 1."""
    centred = points - points.mean(-2, keepdim=True)
    radius = centred.norm(dim=-1).amax(-1, keepdim=True).clamp_min(1e-12)
    return centred / radius[..., None]


def sample_points(points: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """A random subset of ``n`` points of each cloud [S, P, 3] (without replacement) -> [S, n, 3]."""
    S, P = points.shape[:2]
    if not 1 <= n <= P:
        raise DataError(f"cannot take {n} points of clouds of {P} points (expected 1 .. {P})")
    order = torch.rand(S, P, generator=generator).argsort(1)[:, :n]
    return torch.gather(points, 1, order[..., None].expand(-1, -1, points.shape[-1]))


SHAPES = ("sphere", "box", "cylinder", "torus", "cone")


def synthetic_shapes(n_shapes: int, n_points: int, generator: torch.Generator) -> PointClouds:
    """Real-looking generated clouds [n_shapes, n_points, 3] for tests and examples: points
    uniform on the surface (by area for the box) of a randomly stretched and rotated sphere,
    box, cylinder, torus or cone, on the unit sphere; labels index ``SHAPES``."""
    def u(*shape):
        return torch.rand(*shape, generator=generator)

    labels = torch.randint(0, len(SHAPES), (n_shapes,), generator=generator)
    clouds = []
    for kind in labels.tolist():
        t, s = 2 * math.pi * u(n_points), u(n_points)
        if SHAPES[kind] == "sphere":
            p = torch.nn.functional.normalize(torch.randn(n_points, 3, generator=generator), dim=1)
        elif SHAPES[kind] == "box":
            p = 2 * u(n_points, 3) - 1
            face = torch.randint(0, 3, (n_points,), generator=generator)
            p[torch.arange(n_points), face] = torch.where(u(n_points) < 0.5, -1.0, 1.0)
        elif SHAPES[kind] == "cylinder":
            p = torch.stack([t.cos(), t.sin(), 2 * s - 1], 1)
        elif SHAPES[kind] == "torus":
            r = 0.2 + 0.3 * float(u(1))
            phi = 2 * math.pi * u(n_points)
            p = torch.stack([(1 + r * phi.cos()) * t.cos(), (1 + r * phi.cos()) * t.sin(), r * phi.sin()], 1)
        else:                                            # cone: radius shrinking with height
            h = 1 - s.sqrt()
            p = torch.stack([(1 - h) * t.cos(), (1 - h) * t.sin(), 2 * h - 1], 1)
        q, _ = torch.linalg.qr(torch.randn(3, 3, generator=generator))
        clouds.append((p * (0.4 + u(3))) @ q)
    return PointClouds(normalize_unit_sphere(torch.stack(clouds)), labels, list(SHAPES),
                       [f"{SHAPES[k]}_{i:04d}" for i, k in enumerate(labels.tolist())])


def validation_split(clouds: PointClouds, fraction: float = 0.2):
    """(train, val): in every class, the last ``fraction`` of its shapes (by name) is validation."""
    if not 0 < fraction < 1:
        raise DataError(f"validation fraction: expected 0 < fraction < 1, got {fraction}")
    train, val = [], []
    for c in range(len(clouds.classes)):
        idx = sorted((i for i, y in enumerate(clouds.labels.tolist()) if y == c), key=lambda i: clouds.names[i])
        k = int(round(len(idx) * fraction))
        train += idx[:len(idx) - k]
        val += idx[len(idx) - k:]
    return clouds.subset(sorted(train)), clouds.subset(sorted(val))


def _check(array: np.ndarray, where: str, min_points: int) -> np.ndarray:
    if array.ndim != 2 or array.shape[1] < 3:
        raise DataError(f"{where}: expected points [P, 3] (or [P, 6] with normals), got shape {array.shape}")
    array = np.asarray(array[:, :3], dtype=np.float32)
    if len(array) < min_points:
        raise DataError(f"{where}: {len(array)} points, fewer than the {min_points} asked for")
    if not np.isfinite(array).all():
        raise DataError(f"{where}: non-finite coordinates")
    return array


def _detect(root: str) -> str:
    if glob.glob(os.path.join(root, "ply_data_*.h5")):
        return "hdf5"
    if os.path.isfile(os.path.join(root, "modelnet40_shape_names.txt")):
        return "text"
    if os.path.isdir(os.path.join(root, "ModelNet40")) or glob.glob(os.path.join(root, "*", "*", "*.npy")):
        return "npy"
    raise DataError(f"{root!r}: not a ModelNet40 folder (expected ModelNet40/<class>/<split>/*.npy, "
                    f"ply_data_<split>N.h5 files, or modelnet40_shape_names.txt with <class>/*.txt)")


def _read_lines(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def _load_npy(root: str, split: str, min_points: int):
    base = os.path.join(root, "ModelNet40") if os.path.isdir(os.path.join(root, "ModelNet40")) else root
    classes = sorted(c for c in os.listdir(base) if os.path.isdir(os.path.join(base, c, split)))
    if not classes:
        raise DataError(f"{base!r}: no <class>/{split}/ folders")
    arrays, labels, names = [], [], []
    for y, c in enumerate(classes):
        for path in sorted(glob.glob(os.path.join(base, c, split, "*.npy"))):
            try:
                array = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DataError(f"{path}: not a readable .npy array ({e})") from None
            arrays.append(_check(array, path, min_points))
            labels.append(y)
            names.append(os.path.splitext(os.path.basename(path))[0])
    return arrays, labels, classes, names


def _load_hdf5(root: str, split: str, min_points: int):
    import h5py
    classes = _read_lines(os.path.join(root, "shape_names.txt"))
    files = sorted(glob.glob(os.path.join(root, f"ply_data_{split}*.h5")),
                   key=lambda p: int(re.findall(r"(\d+)\.h5$", p)[0]) if re.findall(r"(\d+)\.h5$", p) else 0)
    if not files:
        raise DataError(f"{root!r}: no ply_data_{split}N.h5 files")
    arrays, labels, names = [], [], []
    for path in files:
        try:
            with h5py.File(path, "r") as f:
                data, label = np.asarray(f["data"]), np.asarray(f["label"]).reshape(-1)
        except (OSError, KeyError) as e:
            raise DataError(f"{path}: not an HDF5 file with 'data' and 'label' ({e})") from None
        if data.ndim != 3 or len(label) != len(data):
            raise DataError(f"{path}: expected data [S, P, 3] and label [S], got {data.shape} and {label.shape}")
        for i, (cloud, y) in enumerate(zip(data, label)):
            if not 0 <= int(y) < len(classes):
                raise DataError(f"{path}: shape {i} has label {int(y)}, outside the {len(classes)} classes "
                                f"of shape_names.txt")
            arrays.append(_check(cloud, f"{path} shape {i}", min_points))
            labels.append(int(y))
            names.append(f"{os.path.basename(path)}:{i}")
    return arrays, labels, classes, names


def _load_text(root: str, split: str, min_points: int):
    classes = _read_lines(os.path.join(root, "modelnet40_shape_names.txt"))
    arrays, labels, names = [], [], []
    for shape in _read_lines(os.path.join(root, f"modelnet40_{split}.txt")):
        c = shape.rsplit("_", 1)[0]
        if c not in classes:
            raise DataError(f"{os.path.join(root, f'modelnet40_{split}.txt')}: shape {shape!r} is of class "
                            f"{c!r}, not in modelnet40_shape_names.txt")
        path = os.path.join(root, c, shape + ".txt")
        try:
            array = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not comma-separated x,y,z[,nx,ny,nz] rows ({e})") from None
        arrays.append(_check(array, path, min_points))
        labels.append(classes.index(c))
        names.append(shape)
    return arrays, labels, classes, names


def load_modelnet40(root: str, split: str = "train", layout: str = "auto",
                    classes: Optional[Sequence[str]] = None, n_points: Optional[int] = None,
                    normalize: bool = True, seed: int = 0) -> PointClouds:
    """The shapes of ``split`` under ``root`` (see the module docstring for the layouts).

    ``classes``: keep only these; ``n_points``: a random subset of that many points of every
    cloud (seeded by ``seed``; default: all points, which must then be equally many);
    ``normalize``: to the unit sphere (after subsampling)."""
    if not os.path.isdir(root):
        raise DataError(f"ModelNet40 root {root!r} is not a folder")
    if layout == "auto":
        layout = _detect(root)
    if layout not in LAYOUTS:
        raise DataError(f"layout {layout!r} is not one of auto, {', '.join(LAYOUTS)}")
    reader = {"npy": _load_npy, "hdf5": _load_hdf5, "text": _load_text}[layout]
    arrays, labels, names_of_classes, names = reader(root, split, n_points or 1)
    if not arrays:
        raise DataError(f"{root!r}: no shapes in split {split!r}")
    g = torch.Generator().manual_seed(seed)
    if n_points:
        clouds = [sample_points(torch.from_numpy(x)[None], n_points, g)[0] for x in arrays]
    else:
        sizes = {len(x) for x in arrays}
        if len(sizes) > 1:
            raise DataError(f"{root!r}: clouds of {sorted(sizes)[:4]} points; pass n_points to take equally many")
        clouds = [torch.from_numpy(x) for x in arrays]
    points = torch.stack(clouds)
    if normalize:
        points = normalize_unit_sphere(points)
    out = PointClouds(points, torch.tensor(labels, dtype=torch.long), names_of_classes, names)
    return out.of_classes(classes) if classes is not None else out
