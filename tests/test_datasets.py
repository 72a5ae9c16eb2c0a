import os

import numpy as np
import pytest
import torch

from fewshot.data import build_dataset, build_transform, chen_cub_split, datasets
from fewshot.errors import ConfigError, DataError

from conftest import make_csv_layout, write_image


def test_registry_lists_every_layout():
    assert set(datasets()) >= {"miniimagenet", "miniimagenet_pickle", "cub", "cub_official",
                               "tieredimagenet", "fc100", "cifarfs", "omniglot", "folder"}


@pytest.mark.parametrize("name", ["miniimagenet", "cub"])
def test_csv_layout(csv_root, name):
    ds = build_dataset(name, csv_root, "train")
    assert len(ds.classes) == 6 and len(ds) == 48
    assert ds.classes == sorted(ds.classes)
    counts = np.bincount(ds.labels)
    assert (counts == 8).all()
    # every image of a class carries that class's wnid in its file name
    for path, y in zip(ds.paths, ds.labels):
        assert os.path.basename(path).startswith(ds.classes[y])
    img, label = ds.with_transform(build_transform("deepemd", 84, train=False))[0]
    assert img.shape == (3, 84, 84) and label == 0


@pytest.mark.parametrize("name", ["tieredimagenet", "fc100", "cifarfs", "folder"])
def test_split_folder_layouts(folder_root, name):
    for split, n in (("train", 6), ("val", 5), ("test", 5)):
        ds = build_dataset(name, folder_root, split)
        assert len(ds.classes) == n and len(ds) == n * 8
        assert all(os.path.basename(os.path.dirname(p)) == ds.classes[y]
                   for p, y in zip(ds.paths, ds.labels))


def test_folder_with_split_file(tmp_path, write_json):
    root = str(tmp_path / "flat")
    for c in range(4):
        for j in range(3):
            write_image(os.path.join(root, f"class{c}", f"{j}.jpg"), c * 10 + j)
    spec = write_json("split.json", {"train": ["class0", "class2"], "val": ["class1", "class3"]})
    ds = build_dataset("folder", root, "val", split_file=spec)
    assert ds.classes == ["class1", "class3"] and len(ds) == 6
    with pytest.raises(ConfigError, match="^options.split_file: not given.*no split folder 'train'"):
        build_dataset("folder", root, "train")
    bad = write_json("bad.json", {"train": ["nope"]})
    with pytest.raises(DataError, match="nope"):
        build_dataset("folder", root, "train", split_file=bad)


def test_pickle_layouts(mini_pickle_root, array_pickle_root):
    ds = build_dataset("miniimagenet_pickle", mini_pickle_root, "val")
    assert ds.classes == [f"nval{c}" for c in range(5)] and len(ds) == 30
    img, y = ds[7]
    assert img.size == (10, 10) and y == 1
    fc = build_dataset("fc100", array_pickle_root, "test")
    assert fc.classes == ["10", "11", "12", "13", "14"] and fc.labels[6] == 1
    # identical pixels to the array row
    assert np.array_equal(np.asarray(fc.image(3)), fc.array[3])


def test_cub_official_chen_split_and_boxes(cub_official_root, write_json):
    folders = sorted(os.listdir(os.path.join(cub_official_root, "images")))
    assert chen_cub_split(folders, "train") == folders[0::2]
    assert chen_cub_split(folders, "val") == folders[1::4]
    assert chen_cub_split(folders, "test") == folders[3::4]
    full = [f"{i:03d}.x" for i in range(1, 201)]
    assert [len(chen_cub_split(full, s)) for s in ("train", "val", "test")] == [100, 50, 50]
    ds = build_dataset("cub_official", cub_official_root, "val", bounding_box=True)
    assert ds.classes == folders[1::4]
    assert ds.image(0).size == (10, 8)  # cropped to the 10 x 8 box
    spec = write_json("cub.json", {"test": [folders[0], folders[5]]})
    assert build_dataset("cub_official", cub_official_root, "test", split_file=spec).classes == \
        [folders[0], folders[5]]


def test_cub_official_release_layout_with_split_json(cub_official_root):
    """The folder holding CUB_200_2011/ and split.json (as the real subset ships): the split
    comes from split.json, images from images.txt, crops from bounding_boxes.txt."""
    import json
    import shutil
    holder = os.path.join(os.path.dirname(cub_official_root), "cub")
    shutil.move(cub_official_root, os.path.join(holder, "CUB_200_2011"))
    folders = sorted(os.listdir(os.path.join(holder, "CUB_200_2011", "images")))
    with open(os.path.join(holder, "split.json"), "w") as f:
        json.dump({"train": folders[:5], "val": folders[5:]}, f)
    train = build_dataset("cub_official", holder, "train", bounding_box=True)
    val = build_dataset("cub_official", holder, "val", bounding_box=True)
    assert train.classes == folders[:5] and val.classes == folders[5:]
    assert len(train) == 5 * 6 and train.image(7).size == (10, 8)
    # images.txt decides which images belong to the dataset: an unlisted file is not used
    write_image(os.path.join(holder, "CUB_200_2011", "images", folders[0], "extra.jpg"), 99, size=20)
    assert len(build_dataset("cub_official", holder, "train")) == 5 * 6


def _edit_line(path, index, text):
    lines = open(path).read().splitlines()
    lines[index] = text
    open(path, "w").write("\n".join(lines) + "\n")


def test_cub_boxes_that_overhang_are_clipped_and_counted(cub_official_root, caplog):
    """Real CUB-200-2011 boxes overhang their image (by up to 6% of the side in 14 real
    classes): clipped to the image, one line saying how many, the crop inside the image."""
    boxes = os.path.join(cub_official_root, "bounding_boxes.txt")
    _edit_line(boxes, 0, "1 15.0 3.0 10.0 8.0")          # 25% past the right border of 20 px
    _edit_line(boxes, 1, "2 -1.0 -2.0 10.0 8.0")         # past the top-left corner
    with caplog.at_level("WARNING"):
        ds = build_dataset("cub_official", cub_official_root, "train", bounding_box=True)
    assert [r.getMessage() for r in caplog.records if "clipped" in r.getMessage()] == [
        f"{boxes}: 2 of {len(ds)} bounding boxes overhang their image and were clipped to it "
        f"(the largest overhang: 25.0% of the image side)"]
    first = [i for i, p in enumerate(ds.paths) if p.endswith("Bird_0_0000.jpg")][0]
    assert ds.boxes[first] == (15.0, 3.0, 5.0, 8.0) and ds.image(first).size == (5, 8)
    second = [i for i, p in enumerate(ds.paths) if p.endswith("Bird_0_0001.jpg")][0]
    assert ds.boxes[second] == (0.0, 0.0, 9.0, 6.0)


def test_cub_official_bad_release_is_reported(cub_official_root, write_json):
    folders = sorted(os.listdir(os.path.join(cub_official_root, "images")))
    spec = write_json("split.json", {"train": folders[:2] + ["999.Dodo"]})
    with pytest.raises(DataError, match=r"split\.json.*1 class\(es\) of split 'train' not found.*999\.Dodo"):
        build_dataset("cub_official", cub_official_root, "train", split_file=spec)
    # a box outside its 20 x 20 image, named with the file and the image size; an empty box
    boxes = os.path.join(cub_official_root, "bounding_boxes.txt")
    _edit_line(boxes, 0, "1 25.0 3.0 10.0 8.0")
    with pytest.raises(DataError, match=r"bounding box .*25\.0.*Bird_0_0000\.jpg.*20 x 20 image"):
        build_dataset("cub_official", cub_official_root, "train", bounding_box=True)
    _edit_line(boxes, 0, "1 2.0 3.0 0.0 8.0")
    with pytest.raises(DataError, match="does not lie inside"):
        build_dataset("cub_official", cub_official_root, "train", bounding_box=True)
    # an image listed in images.txt but absent on disk
    os.remove(os.path.join(cub_official_root, "images", folders[0], "Bird_0_0003.jpg"))
    with pytest.raises(DataError, match=r"images\.txt' lists 1 image\(s\) of split 'train'.*Bird_0_0003"):
        build_dataset("cub_official", cub_official_root, "train")


def test_omniglot_alphabet_split_and_rotations(omniglot_root):
    train = build_dataset("omniglot", omniglot_root, "train")
    val = build_dataset("omniglot", omniglot_root, "val", alphabets=None)
    test = build_dataset("omniglot", omniglot_root, "test")
    # 7 background alphabets: 2 train, 5 val (default); evaluation alphabets are test
    assert {c.split("/")[0] for c in train.classes} == {"bac_Alphabet0", "bac_Alphabet1"}
    assert len({c.split("/")[0] for c in val.classes}) == 5
    assert {c.split("/")[0] for c in test.classes} == {"eva_Alphabet0", "eva_Alphabet1"}
    assert not set(train.classes) & set(val.classes)
    rot = build_dataset("omniglot", omniglot_root, "train", rotations=True)
    assert len(rot.classes) == 4 * len(train.classes)
    j = rot.labels.index(len(train.classes))  # first image of the first 90-degree class
    assert np.array_equal(np.asarray(rot.image(j)), np.asarray(train.image(0).rotate(90)))
    custom = build_dataset("omniglot", omniglot_root, "val",
                           alphabets={"val": ["eva_Alphabet1"]})
    assert len(custom.classes) == 3


# ----------------------------------------------------------------------------- bad data

def test_missing_root_names_path(tmp_path):
    with pytest.raises(DataError, match="does-not-exist.*--data-root"):
        build_dataset("miniimagenet", str(tmp_path / "does-not-exist"), "train")


def test_missing_split_file(csv_root):
    with pytest.raises(DataError, match=r"split.*test2\.csv.*does not exist"):
        build_dataset("miniimagenet", csv_root, "test2")


@pytest.mark.parametrize("content,match", [
    ("name,class\na.jpg,n1\n", "header 'filename,label'"),
    ("filename,label\na.jpg\n", "line 2: expected 'filename,label'"),
    ("filename,label\nmissing.jpg,n1\n", "line 2: image 'missing.jpg' not found"),
    ("", "header"),
])
def test_malformed_split_file(csv_root, content, match):
    with open(os.path.join(csv_root, "split", "bad.csv"), "w") as f:
        f.write(content)
    with pytest.raises(DataError, match=match):
        build_dataset("miniimagenet", csv_root, "bad")


def test_corrupt_and_truncated_images_raise(tmp_path):
    root = make_csv_layout(str(tmp_path / "m"), splits=(("train", 2),), per_class=2)
    ds = build_dataset("miniimagenet", root, "train")
    with open(ds.paths[0], "wb") as f:
        f.write(b"this is not a jpeg")
    with pytest.raises(DataError, match=ds.paths[0]):
        ds[0]
    data = open(ds.paths[1], "rb").read()
    with open(ds.paths[1], "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(DataError, match="could not be decoded"):
        ds[1]


def test_transforms_shapes():
    from PIL import Image
    img = Image.new("RGB", (100, 60), (10, 20, 30))
    assert build_transform("deepemd", 84, train=True)(img).shape == (3, 84, 84)
    assert build_transform("deepemd", 84, train=False)(img).shape == (3, 84, 84)
    g = build_transform("grayscale", 28)(img)
    assert g.shape == (1, 28, 28) and torch.all((g >= 0) & (g <= 1))


def test_a_plain_folder_per_class_tree_works_with_split_all(tmp_path):
    from conftest import write_image
    for c in ("cat", "dog", "owl"):
        for j in range(2):
            write_image(str(tmp_path / "mine" / c / f"{j}.jpg"), j)
    ds = build_dataset("folder", str(tmp_path / "mine"), "all")
    assert ds.classes == ["cat", "dog", "owl"] and len(ds) == 6
    with pytest.raises(ConfigError, match="split 'all' for every class folder"):
        build_dataset("folder", str(tmp_path / "mine"), "train")
    os.makedirs(tmp_path / "mine" / "empty")
    with pytest.raises(DataError, match=r"\['empty'\] hold no images"):
        build_dataset("folder", str(tmp_path / "mine"), "all")
