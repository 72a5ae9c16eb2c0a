"""ModelNet40 loaders on generated files in each layout (npy, HDF5, text), normalisation,
subsets, class filters, the validation split, and bad files as one clear DataError."""
from __future__ import annotations

import math
import os

import h5py
import numpy as np
import pytest
import torch

from fewshot.data.pointclouds import (load_modelnet40, normalize_unit_sphere, sample_points,
                                      validation_split)
from fewshot.errors import DataError

CLASSES = ["airplane", "chair", "lamp"]


def _clouds(n_per_class=4, points=64, seed=0):
    """{class: [arrays [points, 6]]}: distinct shifted, scaled blobs with normals."""
    rng = np.random.default_rng(seed)
    return {c: [np.concatenate([rng.normal(size=(points, 3)) * (1 + k) + 5 * k, rng.normal(size=(points, 3))], 1)
                .astype(np.float32) for k in range(n_per_class)] for c in CLASSES}


def write_npy(root, clouds):
    for c, arrays in clouds.items():
        os.makedirs(root / "ModelNet40" / c / "train")
        for k, x in enumerate(arrays):
            np.save(root / "ModelNet40" / c / "train" / f"{c}_{k + 1:04d}.npy", x[:, :3])
    return root


def write_hdf5(root, clouds):
    os.makedirs(root)
    (root / "shape_names.txt").write_text("\n".join(CLASSES) + "\n")
    data = [x[:, :3] for c in CLASSES for x in clouds[c]]
    labels = [i for i, c in enumerate(CLASSES) for _ in clouds[c]]
    half = len(data) // 2                    # two files, as the release splits a split
    for f, sl in ((0, slice(0, half)), (1, slice(half, None))):
        with h5py.File(root / f"ply_data_train{f}.h5", "w") as h:
            h["data"] = np.stack(data[sl])
            h["label"] = np.array(labels[sl], dtype=np.uint8)[:, None]
    return root


def write_text(root, clouds):
    os.makedirs(root)
    (root / "modelnet40_shape_names.txt").write_text("\n".join(CLASSES) + "\n")
    shapes = []
    for c, arrays in clouds.items():
        os.makedirs(root / c)
        for k, x in enumerate(arrays):
            name = f"{c}_{k + 1:04d}"
            np.savetxt(root / c / f"{name}.txt", x, delimiter=",", fmt="%.6f")
            shapes.append(name)
    (root / "modelnet40_train.txt").write_text("\n".join(shapes) + "\n")
    return root


WRITERS = {"npy": write_npy, "hdf5": write_hdf5, "text": write_text}


@pytest.mark.parametrize("layout", list(WRITERS))
def test_each_layout_reads_the_same_normalised_clouds(tmp_path, layout):
    clouds = _clouds()
    root = WRITERS[layout](tmp_path / layout, clouds)
    data = load_modelnet40(str(root))                    # the layout is recognised
    assert data.points.shape == (12, 64, 3) and data.classes == CLASSES
    assert data.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    expected = normalize_unit_sphere(torch.from_numpy(np.stack([x[:, :3] for c in CLASSES for x in clouds[c]])))
    torch.testing.assert_close(data.points, expected, atol=1e-5, rtol=0)
    # unit sphere: centroid 0, largest radius 1
    torch.testing.assert_close(data.points.mean(1), torch.zeros(12, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.points.norm(dim=-1).amax(1), torch.ones(12))
    raw = load_modelnet40(str(root), layout=layout, normalize=False)
    torch.testing.assert_close(raw.points[5], torch.from_numpy(clouds["chair"][1][:, :3]), atol=1e-5, rtol=0)


def test_subsets_class_filter_and_validation_split(tmp_path):
    root = write_npy(tmp_path, _clouds(n_per_class=5))
    full = load_modelnet40(str(root), normalize=False)
    sub = load_modelnet40(str(root), n_points=16, normalize=False, seed=3)
    assert sub.points.shape == (15, 16, 3)
    for s, f in zip(sub.points, full.points):            # each subset point is a point of its cloud
        assert (s[:, None] - f[None]).abs().sum(-1).amin(1).max() == 0
        assert len(torch.unique(s, dim=0)) == 16         # without replacement
    again = load_modelnet40(str(root), n_points=16, normalize=False, seed=3)
    assert torch.equal(sub.points, again.points)         # seeded
    lamps = load_modelnet40(str(root), classes=["lamp"])
    assert len(lamps) == 5 and set(lamps.labels.tolist()) == {2}
    train, val = validation_split(full, 0.2)
    assert len(train) == 12 and len(val) == 3 and not set(train.names) & set(val.names)
    assert sorted(val.names) == ["airplane_0005", "chair_0005", "lamp_0005"]
    g = torch.Generator().manual_seed(0)
    assert sample_points(full.points, 8, g).shape == (15, 8, 3)


def test_bad_files_are_one_clear_error(tmp_path):
    root = write_npy(tmp_path / "a", _clouds())
    bad = root / "ModelNet40" / "chair" / "train" / "chair_0002.npy"
    np.save(bad, np.full((64, 3), np.nan, np.float32))
    with pytest.raises(DataError, match="chair_0002.npy: non-finite"):
        load_modelnet40(str(root))
    np.save(bad, np.zeros((64, 2), np.float32))
    with pytest.raises(DataError, match=r"chair_0002.npy: expected points \[P, 3\]"):
        load_modelnet40(str(root))
    bad.write_bytes(b"not numpy")
    with pytest.raises(DataError, match="chair_0002.npy: not a readable"):
        load_modelnet40(str(root))
    root = write_npy(tmp_path / "b", _clouds())
    with pytest.raises(DataError, match="fewer than the 100 asked for"):
        load_modelnet40(str(root), n_points=100)
    with pytest.raises(DataError, match="not in this dataset"):
        load_modelnet40(str(root), classes=["sofa"])
    with pytest.raises(DataError, match="not a ModelNet40 folder"):
        load_modelnet40(str(tmp_path))
    text = write_text(tmp_path / "t", _clouds())
    (text / "lamp" / "lamp_0001.txt").write_text("1,2\n3,x\n")
    with pytest.raises(DataError, match="lamp_0001.txt: not comma-separated"):
        load_modelnet40(str(text))
    h5 = write_hdf5(tmp_path / "h", _clouds())
    with h5py.File(h5 / "ply_data_train1.h5", "a") as f:
        f["label"][0] = 7
    with pytest.raises(DataError, match="label 7, outside the 3 classes"):
        load_modelnet40(str(h5))


def test_autoencoder_script_trains_with_every_loss_on_tiny_data(tmp_path):
    """scripts/pointcloud_autoencoder.py end to end on generated npy clouds: one epoch per loss,
    the JSON rows and the picture."""
    import json
    import subprocess
    import sys
    root = write_npy(tmp_path / "data", _clouds(n_per_class=5, points=32))
    out = tmp_path / "out"
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "pointcloud_autoencoder.py")
    run = subprocess.run([sys.executable, script, "--data-root", str(root), "--out", str(out), "--points", "16",
                          "--epochs", "1", "--batch", "4", "--latent", "8", "--sinkhorn-iter", "5"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    doc = json.loads((out / "autoencoder.json").read_text())
    assert [r["loss"] for r in doc["rows"]] == ["chamfer", "learned", "exact", "sinkhorn"]
    assert doc["train_shapes"] == 12 and doc["val_shapes"] == 3
    for r in doc["rows"]:
        assert r["val_exact_emd"][0] > 0 and r["val_chamfer"][0] > 0 and math.isfinite(r["final_train_loss"])
        assert set(r["paired_relative_difference"]) == {"chamfer", "learned", "exact", "sinkhorn"} - {r["loss"]}
    assert (out / "autoencoder.png").stat().st_size > 1000
    assert doc["args"]["learned_options"] == {}
    # a learned-EMD option is checked as the solver checks it: one line, exit 2, nothing written
    for bad, says in (("sharpness=0", "--learned-option.sharpness: expected a finite number > 0"),
                      ("gradient", "expected KEY=VALUE"), ("temperature=2", "unknown option(s) 'temperature'")):
        run = subprocess.run([sys.executable, script, "--data-root", str(root), "--out", str(tmp_path / "bad"),
                              "--learned-option", bad], capture_output=True, text=True, timeout=600)
        assert run.returncode == 2 and says in run.stderr and "Traceback" not in run.stderr, run.stderr
        assert not (tmp_path / "bad").exists()


def test_learned_emd_trains_on_real_cloud_pairs(tmp_path):
    """scripts/train_learned_emd.py --modelnet: pairs of (generated, npy-layout) clouds, the held-out
    classes never drawn; the saved model records it and solves point-cloud problems."""
    import subprocess
    import sys
    from fewshot.emd import learned_emd
    root = write_npy(tmp_path / "data", _clouds(n_per_class=5, points=32))
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "train_learned_emd.py")
    out = tmp_path / "m.pt"
    run = subprocess.run([sys.executable, script, "--out", str(out), "--steps", "2", "--batch", "4", "--nodes", "16",
                          "--modelnet", str(root), "--hold-out-classes", "1", "--dim", "16"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "8 training shapes of 2 classes (1 classes held out)" in run.stdout
    info = torch.load(out, weights_only=True)["info"]
    assert info["modelnet"] == str(root) and info["hold_out_classes"] == 1
    x = torch.rand(2, 16, 3)
    r = learned_emd(x, x.flip(1), checkpoint=str(out))
    assert r.value.shape == (2,) and torch.isfinite(r.value).all()


def test_synthetic_shapes_are_seeded_surfaces_on_the_unit_sphere():
    from fewshot.data.pointclouds import SHAPES, synthetic_shapes
    one = synthetic_shapes(40, 64, torch.Generator().manual_seed(3))
    two = synthetic_shapes(40, 64, torch.Generator().manual_seed(3))
    assert one.points.shape == (40, 64, 3) and torch.equal(one.points, two.points)
    torch.testing.assert_close(one.points.mean(1), torch.zeros(40, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(one.points.norm(dim=-1).amax(1), torch.ones(40))
    assert set(one.labels.tolist()) == set(range(len(SHAPES))) and one.classes == list(SHAPES)


def test_pointcloud_benchmark_runs_on_tiny_data(tmp_path):
    """benchmarks/learned_emd_pointclouds.py end to end on generated npy clouds: a quality row
    per method, shape group and size, speed rows for every engine, and the markdown tables."""
    import json
    import subprocess
    import sys
    root = write_npy(tmp_path / "data", _clouds(n_per_class=10, points=32))
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "learned_emd_pointclouds.py")
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, script, "--data-root", str(root), "--json", str(out), "--sizes", "16",
                          "--speed-sizes", "16", "64", "--pairs", "6", "--batch", "2", "--repeat", "1",
                          "--hold-out-classes", "1", "--batched-up-to", "32", "--max-size", "hungarian=16",
                          "--memory-sizes", "64"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    quality = {(r["method"], r["shapes"]) for r in rows if r["kind"] == "quality"}
    learned = ("learned (cosine)", "learned (pointclouds)", "learned (cosine, autograd gradient)",
               "learned (pointclouds, autograd gradient)")
    assert quality == {(m, s) for m in learned + ("sinkhorn", "chamfer") for s in ("seen classes", "held-out classes")}
    by_mode = {r["method"]: r for r in rows if r["kind"] == "quality" and r["shapes"] == "seen classes"}
    for name in ("cosine", "pointclouds"):      # one plan, two gradients: the value columns agree
        assert by_mode[f"learned ({name})"]["pearson"] == pytest.approx(
            by_mode[f"learned ({name}, autograd gradient)"]["pearson"], abs=1e-6)
    speed = [r for r in rows if r["kind"] == "speed"]
    assert {r["method"] for r in speed} >= {"exact (simplex)", "exact (pot)", "exact (assignment)", "hungarian"}
    assert not [r for r in speed if r["method"] == "hungarian" and r["points"] == 64]       # its cap
    assert all((r["ms_per_pair_batched"] is None) == (r["points"] == 64) for r in speed)     # upsampled, unbatched
    assert all(r["upsampled"] == (r["points"] == 64) for r in speed)
    assert "| learned (pointclouds) |" in run.stdout and "| 16 | seen classes | chamfer |" in run.stdout
    memory = [r for r in rows if r["kind"] == "memory"]
    assert {(r["method"], r["gradient"]) for r in memory} == {(f"learned ({m})", g) for m in ("cosine", "pointclouds")
                                                             for g in ("plan", "autograd")}
    assert all(r["points"] == 64 and r["batch"] == 2 and r["peak_growth_mb"] >= 0 for r in memory)
    assert "2 pairs at 64 points: peak memory" in run.stdout
