"""Tiny generated datasets in every supported layout (no real data needed), and reading a
run's logged training losses."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image


def write_image(path: str, seed: int, size: int = 12, mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(rng.integers(0, 255, size=shape, dtype=np.uint8), mode).save(path)


def make_split_folders(root: str, splits=(("train", 6), ("val", 5), ("test", 5)), per_class: int = 8,
                       ext: str = "png") -> str:
    k = 0
    for split, n_classes in splits:
        for c in range(n_classes):
            for j in range(per_class):
                write_image(os.path.join(root, split, f"{split}_class{c}", f"{j}.{ext}"), k)
                k += 1
    return root


def make_csv_layout(root: str, splits=(("train", 6), ("val", 5), ("test", 5)), per_class: int = 8) -> str:
    os.makedirs(os.path.join(root, "split"), exist_ok=True)
    k = 0
    for split, n_classes in splits:
        rows = ["filename,label"]
        for c in range(n_classes):
            wnid = f"n{split}{c:04d}"
            for j in range(per_class):
                name = f"{wnid}{j:08d}.jpg"
                write_image(os.path.join(root, "images", name), k)
                rows.append(f"{name},{wnid}")
                k += 1
        with open(os.path.join(root, "split", f"{split}.csv"), "w") as f:
            f.write("\n".join(rows) + "\n")
    return root


@pytest.fixture
def csv_root(tmp_path):
    return make_csv_layout(str(tmp_path / "mini"))


@pytest.fixture
def folder_root(tmp_path):
    return make_split_folders(str(tmp_path / "folders"))


@pytest.fixture
def cub_official_root(tmp_path):
    root = str(tmp_path / "CUB_200_2011")
    index, boxes = [], []
    k = 1
    for c in range(8):
        folder = f"{c + 1:03d}.Bird_{c}"
        for j in range(6):
            rel = f"{folder}/Bird_{c}_{j:04d}.jpg"
            write_image(os.path.join(root, "images", rel), k, size=20)
            index.append(f"{k} {rel}")
            boxes.append(f"{k} 2.0 3.0 10.0 8.0")
            k += 1
    with open(os.path.join(root, "images.txt"), "w") as f:
        f.write("\n".join(index) + "\n")
    with open(os.path.join(root, "bounding_boxes.txt"), "w") as f:
        f.write("\n".join(boxes) + "\n")
    return root


@pytest.fixture
def omniglot_root(tmp_path):
    root = str(tmp_path / "omniglot")
    k = 0
    for part, alphabets in (("images_background", 7), ("images_evaluation", 2)):
        for a in range(alphabets):
            for ch in range(3):
                for j in range(5):
                    write_image(os.path.join(root, part, f"{part[7:10]}_Alphabet{a}",
                                             f"character{ch + 1:02d}", f"{j}.png"), k, mode="L")
                    k += 1
    return root


@pytest.fixture
def mini_pickle_root(tmp_path):
    root = tmp_path / "l2l"
    root.mkdir()
    rng = np.random.default_rng(0)
    for split, n_classes in (("train", 5), ("val", 5), ("test", 5)):
        data = rng.integers(0, 255, size=(n_classes * 6, 10, 10, 3), dtype=np.uint8)
        class_dict = {f"n{split}{c}": list(range(c * 6, c * 6 + 6)) for c in range(n_classes)}
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": data, "class_dict": class_dict}, f)
    return str(root)


@pytest.fixture
def array_pickle_root(tmp_path):
    root = tmp_path / "fc100"
    root.mkdir()
    rng = np.random.default_rng(1)
    for split in ("train", "val", "test"):
        data = rng.integers(0, 255, size=(30, 32, 32, 3), dtype=np.uint8)
        labels = [10 + i // 6 for i in range(30)]
        with open(root / f"FC100_{split}.pickle", "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    return str(root)


@pytest.fixture
def write_json(tmp_path):
    def write(name, obj):
        path = tmp_path / name
        path.write_text(json.dumps(obj))
        return str(path)
    return write


def logged_losses(stage_folder: str) -> list:
    """[(step, loss)] of a training stage's TensorBoard ``train/loss`` scalars, every one logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(os.path.join(stage_folder, "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("train/loss")]
