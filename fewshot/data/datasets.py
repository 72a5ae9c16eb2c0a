"""Few-shot datasets, read from the layouts their users already have on disk.

Every builder returns an :class:`ImageDataset` for one split: a list of images
(file paths, or rows of an in-memory array for pickle releases), an integer label
per image and the class names. Builders are registered by name and created with
:func:`build_dataset`; they check the layout up front and raise
:class:`~fewshot.errors.DataError` naming the path and what was expected.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import pickle
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from .._io import read_text
from ..errors import DataError, OptionError
from ..registry import Registry
from ._image import load_image

DATASETS = Registry("dataset")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


class ImageDataset(torch.utils.data.Dataset):
    """Labelled images of one split.

    Args:
        paths: one identifier per image: a file path, or ``"<file>#<row>"`` for array layouts.
        labels: class index per image, in ``range(len(classes))``.
        classes: class names (e.g. WordNet ids).
        root: dataset root; manifests store paths relative to it.
        array: optional uint8 array [n_images, H, W, C] holding the pixels (pickle layouts).
        rotations: optional rotation in degrees per image (Omniglot rotation classes).
        boxes: optional (x, y, width, height) crop per image (CUB bounding boxes).
        mode: PIL mode images are converted to (``RGB`` or ``L``).
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int], classes: Sequence[str],
                 root: str = "", array: Optional[np.ndarray] = None,
                 rotations: Optional[Sequence[int]] = None,
                 boxes: Optional[Sequence[Tuple[float, float, float, float]]] = None,
                 mode: str = "RGB", name: str = ""):
        if len(paths) != len(labels):
            raise ValueError("paths and labels differ in length")
        self.paths = list(paths)
        self.labels = [int(x) for x in labels]
        self.classes = list(classes)
        self.root = root
        self.array = array
        self.rotations = list(rotations) if rotations is not None else None
        self.boxes = list(boxes) if boxes is not None else None
        self.mode = mode
        self.name = name
        self.transform: Optional[Callable] = None
        self._cache: Optional[Dict[int, Image.Image]] = None

    def __len__(self) -> int:
        return len(self.paths)

    def with_transform(self, transform: Optional[Callable]) -> "ImageDataset":
        """A shallow copy that applies ``transform`` (the decoded-image cache is shared)."""
        other = object.__new__(ImageDataset)
        other.__dict__.update(self.__dict__)
        other.transform = transform
        return other

    def enable_cache(self) -> None:
        """Keep every decoded image in memory after its first use."""
        if self._cache is None:
            self._cache = {}

    def indices_by_class(self) -> Dict[int, List[int]]:
        out: Dict[int, List[int]] = {c: [] for c in range(len(self.classes))}
        for i, y in enumerate(self.labels):
            out[y].append(i)
        return out

    def relative_path(self, index: int) -> str:
        path = self.paths[index]
        if self.root and os.path.isabs(path):
            return os.path.relpath(path, self.root)
        return path

    def index_of(self) -> Dict[str, int]:
        """Map from relative path (as in manifests) to index."""
        return {self.relative_path(i): i for i in range(len(self))}

    def image(self, index: int) -> Image.Image:
        """The decoded, un-transformed image ``index``."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        if self.array is not None:
            img = Image.fromarray(self.array[index]).convert(self.mode)
        else:
            img = load_image(self.paths[index], self.mode)
        if self.boxes is not None:
            x, y, w, h = self.boxes[index]   # clipped to the image when the dataset was built (_clip_box)
            img = img.crop((max(0, int(x)), max(0, int(y)), min(img.width, int(x + w)),
                            min(img.height, int(y + h))))
        if self.rotations is not None and self.rotations[index]:
            img = img.rotate(self.rotations[index])
        if self._cache is not None:
            self._cache[index] = img
        return img

    def __getitem__(self, index: int):
        img = self.image(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.labels[index]


def datasets() -> List[str]:
    """Names of the registered dataset layouts."""
    return DATASETS.names()


def build_dataset(name: str, root: str, split: str, where: str = "options", **options) -> ImageDataset:
    """Create split ``split`` of dataset layout ``name`` found at ``root`` (errors name a bad
    option ``where.KEY``)."""
    if not os.path.isdir(root):
        raise DataError(
            f"dataset root {root!r} ({name}) does not exist. Point to the data with "
            f"--data-root PATH or data.root=PATH; see datasets/README.md for the expected layout")
    ds = DATASETS.create(name, where=where, root=root, split=split, **options)
    if len(ds.classes) == 0:
        raise DataError(f"dataset {name!r} at {root!r}: split {split!r} holds no classes")
    ds.name = f"{name}:{split}"
    return ds


# ----------------------------------------------------------------------------- helpers

def _from_class_lists(class_names: List[str], files: List[List[str]], root: str, **kw) -> ImageDataset:
    paths, labels = [], []
    for label, fs in enumerate(files):
        paths.extend(fs)
        labels.extend([label] * len(fs))
    return ImageDataset(paths, labels, class_names, root=root, **kw)


def list_images(folder: str) -> List[str]:
    """The image files (IMAGE_EXTENSIONS) directly in ``folder``, sorted."""
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS))


def class_folders(folder: str) -> List[str]:
    """The sub-folders of ``folder`` (hidden ones excluded), sorted."""
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))
                  and not d.startswith("."))


def read_split_csv(csv_path: str, image_dir: str) -> Tuple[List[str], List[List[str]]]:
    """Read a FEAT/DeepEMD split file: header ``filename,label``, one image per row."""
    if not os.path.isfile(csv_path):
        raise DataError(f"split file {csv_path!r} does not exist; expected a CSV with header "
                        f"'filename,label' (FEAT/DeepEMD layout)")
    if not os.path.isdir(image_dir):
        raise DataError(f"image folder {image_dir!r} does not exist; expected the images of the "
                        f"split files there")
    existing = set()
    for dirpath, _, files in os.walk(image_dir):
        rel = os.path.relpath(dirpath, image_dir)
        existing.update(f if rel == "." else os.path.join(rel, f) for f in files)
    classes: Dict[str, List[str]] = {}
    seen: Dict[str, int] = {}
    rows = list(csv.reader(io.StringIO(read_text(csv_path, "split file"), newline="")))   # BOM dropped
    if not rows or [c.strip().lower() for c in rows[0]] != ["filename", "label"]:
        raise DataError(f"split file {csv_path!r}: first row must be the header 'filename,label', "
                        f"got {rows[0] if rows else 'an empty file'}")
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"split file {csv_path!r}, line {lineno}: expected 'filename,label', "
                            f"got {','.join(row)!r}")
        name, label = row[0].strip(), row[1].strip()
        if name in seen:
            raise DataError(f"split file {csv_path!r}, line {lineno}: image {name!r} is listed again "
                            f"(first on line {seen[name]})")
        seen[name] = lineno
        if name not in existing:
            raise DataError(f"split file {csv_path!r}, line {lineno}: image {name!r} not found "
                            f"in {image_dir!r}")
        classes.setdefault(label, []).append(os.path.join(image_dir, name))
    if not classes:
        raise DataError(f"split file {csv_path!r} lists no images")
    names = sorted(classes)
    return names, [classes[c] for c in names]


def _split_csv_dataset(root: str, split: str, images: str = "images",
                       split_dir: str = "split") -> ImageDataset:
    names, files = read_split_csv(os.path.join(root, split_dir, f"{split}.csv"),
                                  os.path.join(root, images))
    return _from_class_lists(names, files, root)


def _split_folder_dataset(root: str, split: str, mode: str = "RGB") -> ImageDataset:
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise DataError(f"split folder {folder!r} does not exist; expected "
                        f"{root}/{split}/<class>/<image> (one folder per class)")
    names = class_folders(folder)
    if not names:
        raise DataError(f"split folder {folder!r} holds no class folders")
    files = [list_images(os.path.join(folder, c)) for c in names]
    return _from_class_lists(names, files, root, mode=mode)


def _array_dataset(path: str, data: np.ndarray, labels: Sequence[int], root: str) -> ImageDataset:
    data = np.asarray(data)
    if data.ndim != 4 or data.dtype != np.uint8:
        raise DataError(f"{path!r}: expected uint8 images [N, H, W, C], got {data.dtype} {data.shape}")
    uniq = sorted(set(int(x) for x in labels))
    remap = {c: i for i, c in enumerate(uniq)}
    rel = os.path.relpath(path, root)
    return ImageDataset([f"{rel}#{i}" for i in range(len(data))], [remap[int(x)] for x in labels],
                        [str(c) for c in uniq], root=root, array=data)


# what a data pickle may hold: NumPy arrays, dtypes and scalars besides plain values
_PICKLE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                   ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")}


class _DataUnpickler(pickle.Unpickler):
    """Unpickles arrays and plain values only: any other class or function named in the file is
    refused before it is imported or called, so a data file never runs code."""

    def find_class(self, module, name):
        if (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}; a data pickle may hold only NumPy arrays "
                                     f"and plain values (lists, dicts, strings, numbers)")


def _load_pickle(path: str):
    if not os.path.isfile(path):
        raise DataError(f"pickle file {path!r} does not exist")
    try:
        with open(path, "rb") as f:
            return _DataUnpickler(f, encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a data error
        raise DataError(f"pickle file {path!r} could not be read: {e}") from None


# ----------------------------------------------------------------------------- layouts

@DATASETS.register("miniimagenet")
def mini_imagenet(root: str, split: str, images: str = "images", split_dir: str = "split") -> ImageDataset:
    """miniImageNet, FEAT/DeepEMD layout: ``images/*.jpg`` + ``split/{train,val,test}.csv``."""
    return _split_csv_dataset(root, split, images, split_dir)


@DATASETS.register("miniimagenet_pickle")
def mini_imagenet_pickle(root: str, split: str) -> ImageDataset:
    """miniImageNet, learn2learn layout: ``mini-imagenet-cache-{split}.pkl`` with
    ``image_data`` [N, 84, 84, 3] uint8 and ``class_dict`` {class: [row indices]}."""
    path = os.path.join(root, f"mini-imagenet-cache-{split}.pkl")
    blob = _load_pickle(path)
    if not isinstance(blob, dict) or "image_data" not in blob or "class_dict" not in blob:
        raise DataError(f"{path!r}: expected a dict with keys 'image_data' and 'class_dict'")
    names = sorted(blob["class_dict"])
    labels = np.empty(len(blob["image_data"]), dtype=np.int64)
    labels[:] = -1
    for c, name in enumerate(names):
        labels[np.asarray(blob["class_dict"][name], dtype=np.int64)] = c
    if (labels < 0).any():
        raise DataError(f"{path!r}: {int((labels < 0).sum())} images belong to no class in class_dict")
    ds = _array_dataset(path, blob["image_data"], labels, root)
    ds.classes = names
    return ds


@DATASETS.register("cub")
def cub(root: str, split: str, images: str = "images", split_dir: str = "split") -> ImageDataset:
    """CUB-200-2011, DeepEMD/FEAT release: cropped images + ``split/{split}.csv`` (100/50/50 classes)."""
    return _split_csv_dataset(root, split, images, split_dir)


def chen_cub_split(class_folders: Sequence[str], split: str) -> List[str]:
    """Class split of Chen et al. 2019 ("A Closer Look at Few-shot Classification"):
    over the sorted class folders, index % 2 == 0 -> train (100), % 4 == 1 -> val (50),
    % 4 == 3 -> test (50)."""
    rule = {"train": lambda i: i % 2 == 0, "val": lambda i: i % 4 == 1, "test": lambda i: i % 4 == 3}
    if split not in rule:
        raise DataError(f"CUB split {split!r}: expected train, val or test")
    return [c for i, c in enumerate(sorted(class_folders)) if rule[split](i)]


@DATASETS.register("cub_official")
def cub_official(root: str, split: str, split_file: str = "", bounding_box: bool = False) -> ImageDataset:
    """The official CUB-200-2011 release: ``CUB_200_2011/`` with ``images/<class>/*.jpg``,
    ``images.txt`` and ``bounding_boxes.txt``; ``root`` is that folder or the one holding it.

    Images are those listed in ``images.txt`` (every listed file must exist), or, without
    it, every image under ``images/<class>/``. Classes per split come from ``split_file``
    (JSON ``{"train": [class folders], "val": [...], "test": [...]}``; by default a
    ``split.json`` beside ``CUB_200_2011/`` when there is one), else the Chen et al. 2019
    split (:func:`chen_cub_split`). ``bounding_box`` crops each image to its box from
    ``bounding_boxes.txt``, as the DeepEMD/FEAT pipelines use CUB; when the dataset is built,
    boxes that overhang their image are clipped to it (one line says how many) and a box with
    nothing inside its image is an error."""
    if os.path.isdir(os.path.join(root, "CUB_200_2011")):
        if not split_file and os.path.isfile(os.path.join(root, "split.json")):
            split_file = os.path.join(root, "split.json")
        root = os.path.join(root, "CUB_200_2011")
    image_dir = os.path.join(root, "images")
    if not os.path.isdir(image_dir):
        raise DataError(f"CUB folder {image_dir!r} does not exist; expected CUB_200_2011/images/<class>/")
    folders = class_folders(image_dir)
    if split_file:
        names = _read_split_json(split_file, split)
        missing = [c for c in names if c not in folders]
        if missing:
            raise DataError(f"CUB split file {split_file!r}: {len(missing)} class(es) of split "
                            f"{split!r} not found in {image_dir!r}, e.g. {missing[:3]}")
    else:
        names = chen_cub_split(folders, split)
    index_file = os.path.join(root, "images.txt")
    if os.path.isfile(index_file):
        by_class: Dict[str, List[str]] = {c: [] for c in names}
        for _, rel in _read_rows(index_file, "<id> <image_path>"):
            folder = rel.split("/")[0]
            if folder in by_class:
                by_class[folder].append(os.path.join(image_dir, rel))
        absent = [p for c in names for p in by_class[c] if not os.path.isfile(p)]
        if absent:
            raise DataError(f"{index_file!r} lists {len(absent)} image(s) of split {split!r} that "
                            f"do not exist, e.g. {absent[0]!r}")
        files = [sorted(by_class[c]) for c in names]
    else:
        files = [list_images(os.path.join(image_dir, c)) for c in names]
    empty = [c for c, fs in zip(names, files) if not fs]
    if empty:
        raise DataError(f"CUB classes {empty[:3]} of split {split!r} have no images in {image_dir!r}")
    ds = _from_class_lists(names, files, root)
    if bounding_box:
        ds.boxes = _cub_boxes(root, ds.paths)
    return ds


def _read_rows(path: str, expected: str, numbers: int = 0) -> List[list]:
    """Whitespace-separated rows of ``path``, each with as many fields as ``expected`` names; the
    last ``numbers`` fields of each row are finite numbers (floats)."""
    n = len(expected.split())
    rows = []
    for lineno, line in enumerate(read_text(path, "data file").splitlines(), 1):
        parts: list = line.split()
        if len(parts) != n:
            raise DataError(f"{path!r}, line {lineno}: expected '{expected}'")
        for k in range(n - numbers, n):
            try:
                parts[k] = float(parts[k])
            except ValueError:
                parts[k] = float("nan")
            if not math.isfinite(parts[k]):
                raise DataError(f"{path!r}, line {lineno}: field {expected.split()[k]} is {line.split()[k]!r}; "
                                f"expected a finite number ('{expected}')")
        rows.append(parts)
    return rows


def _read_split_json(split_file: str, split: str) -> List[str]:
    """Class folder names of ``split`` from a JSON split file ``{"train": [...], ...}``."""
    if not os.path.isfile(split_file):
        raise DataError(f"split file {split_file!r} does not exist")
    try:
        names = json.loads(read_text(split_file, "split file"))[split]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"split file {split_file!r}: expected JSON with a list of class folders "
                        f"under key {split!r} ({e})") from None
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        raise DataError(f"split file {split_file!r}: {split!r} must be a list of class folder names "
                        f"(strings), got {json.dumps(names)[:60]}")
    return names


def _cub_boxes(root: str, paths: List[str]) -> List[Tuple[float, float, float, float]]:
    index_file = os.path.join(root, "images.txt")
    box_file = os.path.join(root, "bounding_boxes.txt")
    for f in (index_file, box_file):
        if not os.path.isfile(f):
            raise DataError(f"bounding-box crop needs {f!r}, which does not exist")
    ids = {path: i for i, path in _read_rows(index_file, "<id> <image_path>")}
    boxes = {i: tuple(box) for i, *box in _read_rows(box_file, "<id> <x> <y> <width> <height>", numbers=4)}
    out, clipped, worst = [], 0, 0.0
    for p in paths:
        rel = os.path.relpath(p, os.path.join(root, "images")).replace(os.sep, "/")
        if rel not in ids or ids[rel] not in boxes:
            raise DataError(f"no bounding box for {rel!r} in {box_file!r}")
        box, overhang = _clip_box(boxes[ids[rel]], p, box_file)
        if overhang > 0:
            clipped, worst = clipped + 1, max(worst, overhang)
        out.append(box)
    if clipped:
        logging.getLogger(__name__).warning(
            f"{box_file}: {clipped} of {len(paths)} bounding boxes overhang their image and were clipped "
            f"to it (the largest overhang: {100 * worst:.1f}% of the image side)")
    return out


def _clip_box(box: Tuple[float, float, float, float], path: str,
              box_file: str) -> Tuple[Tuple[float, float, float, float], float]:
    """The box (x, y, width, height) clipped to its image, and how far it overhung (a fraction
    of the image side; 0 inside). The release has boxes that overhang their image (e.g. 10 of
    751 in 14 real classes, the worst by 6.4% of the side); the DeepEMD/FEAT pipelines crop them
    at the border, as here. A box with no positive size, or with less than a pixel inside its
    image, is an error. The image's size is read from its header only."""
    x, y, w, h = box
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, Image.DecompressionBombError) as e:
        raise DataError(f"image {path!r} cannot be read ({e})") from None
    x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)
    if w <= 0 or h <= 0 or x1 - x0 < 1 or y1 - y0 < 1:
        raise DataError(f"bounding box (x, y, width, height) = {box} of {path!r} in {box_file!r} "
                        f"does not lie inside the {width} x {height} image (or is empty)")
    overhang = max(-x / width, -y / height, (x + w - width) / width, (y + h - height) / height, 0.0)
    return (x0, y0, x1 - x0, y1 - y0), overhang


@DATASETS.register("tieredimagenet")
def tiered_imagenet(root: str, split: str) -> ImageDataset:
    """tieredImageNet as released for DeepEMD: ``{train,val,test}/<class>/*.jpg``."""
    return _split_folder_dataset(root, split)


@DATASETS.register("fc100")
def fc100(root: str, split: str) -> ImageDataset:
    """FC100: ``{train,val,test}/<class>/*.png`` (DeepEMD) or learn2learn's
    ``FC100_{split}.pickle`` (keys ``data`` [N, 32, 32, 3] and ``labels``)."""
    return _folder_or_pickle(root, split, f"FC100_{split}.pickle")


@DATASETS.register("cifarfs")
def cifar_fs(root: str, split: str) -> ImageDataset:
    """CIFAR-FS: ``{train,val,test}/<class>/*.png`` (learn2learn ``processed``
    folder) or MetaOptNet's ``CIFAR_FS_{split}.pickle`` (keys ``data``, ``labels``)."""
    return _folder_or_pickle(root, split, f"CIFAR_FS_{split}.pickle")


def _folder_or_pickle(root: str, split: str, pickle_name: str) -> ImageDataset:
    pickle_path = os.path.join(root, pickle_name)
    if os.path.isdir(os.path.join(root, split)) or not os.path.isfile(pickle_path):
        return _split_folder_dataset(root, split)
    blob = _load_pickle(pickle_path)
    if not isinstance(blob, dict) or "data" not in blob or "labels" not in blob:
        raise DataError(f"{pickle_path!r}: expected a dict with keys 'data' and 'labels'")
    return _array_dataset(pickle_path, blob["data"], blob["labels"], root)


OMNIGLOT_VAL_ALPHABETS = 5  # default: last 5 background alphabets (sorted) are validation


@DATASETS.register("omniglot")
def omniglot(root: str, split: str, alphabets: Optional[Dict[str, List[str]]] = None,
             rotations: bool = False) -> ImageDataset:
    """Omniglot: ``images_background`` / ``images_evaluation`` ``<alphabet>/characterNN/*.png``.

    Classes are split by alphabet: ``alphabets`` maps each split name to alphabet folder
    names; by default the sorted background alphabets are train except the last five
    (val), and the evaluation alphabets are test. ``rotations`` adds the 90/180/270
    degree rotations of every character as new classes.
    """
    locations = {}
    for part in ("images_background", "images_evaluation"):
        folder = os.path.join(root, part)
        if os.path.isdir(folder):
            for a in class_folders(folder):
                locations[a] = folder
    if not locations:
        raise DataError(f"Omniglot root {root!r}: expected images_background/ and/or "
                        f"images_evaluation/ with <alphabet>/characterNN/*.png")
    if alphabets is not None:
        if split not in alphabets:
            raise OptionError("alphabets", f"has no entry for split {split!r}")
        chosen = list(alphabets[split])
    else:
        background = sorted(a for a, f in locations.items() if f.endswith("images_background"))
        evaluation = sorted(a for a, f in locations.items() if f.endswith("images_evaluation"))
        default = {"train": background[:-OMNIGLOT_VAL_ALPHABETS],
                   "val": background[-OMNIGLOT_VAL_ALPHABETS:], "test": evaluation}
        if split not in default:
            raise DataError(f"Omniglot split {split!r}: expected train, val or test "
                            f"(or give data.options.alphabets)")
        chosen = default[split]
    missing = [a for a in chosen if a not in locations]
    if missing:
        raise DataError(f"Omniglot root {root!r}: alphabets {missing[:3]} not found")
    names, files = [], []
    for a in chosen:
        for ch in class_folders(os.path.join(locations[a], a)):
            names.append(f"{a}/{ch}")
            files.append(list_images(os.path.join(locations[a], a, ch)))
    angles = [0, 90, 180, 270] if rotations else [0]
    paths, labels, rots, classes = [], [], [], []
    for angle in angles:
        for name, fs in zip(names, files):
            classes.append(name if angle == 0 else f"{name}@rot{angle}")
            paths.extend(fs)
            labels.extend([len(classes) - 1] * len(fs))
            rots.extend([angle] * len(fs))
    return ImageDataset(paths, labels, classes, root=root, rotations=rots if rotations else None,
                        mode="L")


def class_folder_images(root: str, what: str) -> Tuple[List[str], List[List[str]]]:
    """(class folder names, their image files) of a folder with one sub-folder per class;
    DataError naming ``what`` and ``root`` when it is missing, has fewer than 2 class folders,
    or a class folder holds no images."""
    if not os.path.isdir(root):
        raise DataError(f"{what} {root!r} is not a folder (expected one sub-folder of images per class)")
    names = class_folders(root)
    if len(names) < 2:
        raise DataError(f"{what} {root!r} has {len(names)} class folder(s); expected at least 2 sub-folders, "
                        f"one per class")
    files = [list_images(os.path.join(root, c)) for c in names]
    empty = [c for c, f in zip(names, files) if not f]
    if empty:
        raise DataError(f"{what} {root!r}: class folder(s) {empty[:3]} hold no images "
                        f"({', '.join(IMAGE_EXTENSIONS)})")
    return names, files


@DATASETS.register("folder")
def image_folder(root: str, split: str, split_file: str = "") -> ImageDataset:
    """Any folder-per-class tree. Either ``root/{split}/<class>/*``, or ``root/<class>/*``
    with ``split_file`` (JSON ``{"train": [class folders], "val": [...], ...}``), or
    ``root/<class>/*`` with split ``all``: every class folder under ``root``."""
    if os.path.isdir(os.path.join(root, split)) and not split_file:
        return _split_folder_dataset(root, split)
    if split == "all" and not split_file:
        return _from_class_lists(*class_folder_images(root, "folder dataset"), root)
    if not split_file:
        raise OptionError("split_file", f"not given, and folder dataset {root!r} has no split folder "
                                        f"{split!r}: give a JSON naming the classes of each split (or use "
                                        f"split 'all' for every class folder under the root)")
    names = _read_split_json(split_file, split)
    for c in names:
        if not os.path.isdir(os.path.join(root, c)):
            raise DataError(f"split file {split_file!r}: class folder {os.path.join(root, c)!r} "
                            f"does not exist")
    return _from_class_lists(names, [list_images(os.path.join(root, c)) for c in names], root)
