"""predict.py and the Python API (fewshot.load / fit / predict) on generated images: 1-shot and
3-shot support folders, the API's logits against eval.py's episode logits, name resolution and
bad input."""
from __future__ import annotations

import json
import re
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import fewshot
from fewshot.cli import predict_main, train_main
from fewshot.engine import load_trained

from conftest import make_split_folders

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("predict")
    data = make_split_folders(str(base / "data"), per_class=6)
    out = str(base / "run")
    args = ["--config", os.path.join(ROOT, "configs", "protonet_demo.yaml"), "--data-root", data, "--out", out,
            "--device", "cpu", "--way", "3", "--query", "2", "data.image_size=16", "meta.episodes_per_epoch=2",
            "meta.epochs=1", "meta.val_episodes=2", "eval.n_query=2", "run.progress=false",
            "model.backbone_options.hidden=8", "--max-steps", "2", "model.method=deepemd"]
    assert train_main(args) == 0
    return {"data": data, "checkpoint": os.path.join(out, "meta", "best.pt"), "base": base}


def _support(trained, name, shots):
    """A folder tree of 3 test classes with ``shots`` images each, and 2 query images per class."""
    src = os.path.join(trained["data"], "test")
    support, queries = trained["base"] / name, []
    for c in sorted(os.listdir(src))[:3]:
        files = sorted(os.listdir(os.path.join(src, c)))
        os.makedirs(support / c)
        for f in files[:shots]:
            shutil.copy(os.path.join(src, c, f), support / c / f)
        queries += [os.path.join(src, c, f) for f in files[shots:shots + 2]]
    return str(support), queries


@pytest.mark.parametrize("shots", [1, 3])
def test_api_gives_the_logits_of_the_model_on_the_same_episode(trained, shots):
    support, queries = _support(trained, f"support{shots}", shots)
    clf = fewshot.load(trained["checkpoint"])
    classes = sorted(os.listdir(support))
    images = [os.path.join(support, c, f) for c in classes for f in sorted(os.listdir(os.path.join(support, c)))]
    labels = [c for c in classes for _ in range(shots)]
    clf.fit(images, labels)
    assert clf.classes_ == classes
    proba = clf.predict_proba(queries)
    assert proba.shape == (6, 3) and torch.allclose(proba.sum(1), torch.ones(6))
    # reference: the evaluation path on the same images (eval transform, episode_logits)
    config, model = load_trained(trained["checkpoint"], device="cpu")
    from fewshot.data.transforms import build_transform
    from fewshot.data._image import load_image
    t = build_transform(config.data.transform, config.data.image_size, train=False)
    batch = lambda paths: torch.stack([t(load_image(p)) for p in paths])  # noqa: E731
    model.eval()
    with torch.no_grad():
        model.process_support_set(batch(images), torch.tensor([classes.index(c) for c in labels]))
        ref = model(batch(queries))
    torch.testing.assert_close(clf.logits(queries), ref, rtol=1e-5, atol=1e-5)
    assert clf.predict(queries) == [classes[i] for i in ref.argmax(1).tolist()]
    # PIL images and tensors of any size and mode give the same answer as the files
    pil = [Image.open(q).convert("L").resize((40, 30)).convert("RGB") for q in queries]
    assert clf.predict_proba(pil).shape == (6, 3)
    as_tensor = [torch.from_numpy(np.array(Image.open(q).convert("RGB"))).permute(2, 0, 1) for q in queries]
    torch.testing.assert_close(clf.predict_proba(as_tensor), proba, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shots", [1, 3])
def test_predict_py_prints_each_query_and_json(trained, capsys, shots):
    support, queries = _support(trained, f"cli{shots}", shots)
    assert predict_main(["--checkpoint", trained["checkpoint"], "--support", support, "--query", *queries]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"3 classes, {shots} support image(s) per class" in out[0]
    assert len(out) == 7 and all(line.split(": ")[1].split(" (")[0] in os.listdir(support) for line in out[1:])
    folder = os.path.dirname(queries[0])
    assert predict_main(["--checkpoint", trained["checkpoint"], "--support", support, "--query", folder,
                         "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["classes"] == sorted(os.listdir(support)) and doc["support_images"] == 3 * shots
    assert len(doc["queries"]) == len(os.listdir(folder))
    for q in doc["queries"]:
        assert abs(sum(q["probabilities"].values()) - 1) < 1e-3 and q["prediction"] in doc["classes"]


def test_names_resolve_to_shipped_models_and_unknown_names_are_one_line(trained, tmp_path, capfd):
    assert isinstance(fewshot.models_available(), list)
    for name in fewshot.models_available():
        assert os.path.isfile(fewshot.api.resolve_checkpoint(name))
    with pytest.raises(fewshot.errors.FewShotError, match="not the name of a shipped model"):
        fewshot.load("no-such-model")
    support, queries = _support(trained, "bad", 1)
    os.makedirs(tmp_path / "one" / "only")
    shutil.copy(queries[0], tmp_path / "one" / "only" / "a.png")
    os.makedirs(tmp_path / "empty" / "a")
    os.makedirs(tmp_path / "empty" / "b")
    shutil.copy(queries[0], tmp_path / "empty" / "a" / "a.png")
    (tmp_path / "noimages").mkdir()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    cases = [
        (["--checkpoint", "no-such-model", "--support", support, "--query", queries[0]], "no-such-model"),
        (["--checkpoint", trained["checkpoint"], "--support", str(tmp_path / "one"), "--query", queries[0]],
         "has 1 class folder(s)"),
        (["--checkpoint", trained["checkpoint"], "--support", str(tmp_path / "empty"), "--query", queries[0]],
         "hold no images"),
        (["--checkpoint", trained["checkpoint"], "--support", support, "--query", str(tmp_path / "noimages")],
         "--query"),
        (["--checkpoint", trained["checkpoint"], "--support", support, "--query", str(broken)], "broken.png"),
        (["--checkpoint", trained["checkpoint"], "--support", str(tmp_path / "nowhere"), "--query", queries[0]],
         "is not a folder"),
    ]
    for args, culprit in cases:
        capfd.readouterr()
        assert predict_main(args) == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and culprit in err[0], err


def test_predict_explain_draws_each_query_with_the_logits_of_predict(trained, tmp_path, capfd):
    support, queries = _support(trained, "explain", 3)
    clf = fewshot.load(trained["checkpoint"])
    classes = sorted(os.listdir(support))
    images = [os.path.join(support, c, f) for c in classes for f in sorted(os.listdir(os.path.join(support, c)))]
    clf.fit(images, [c for c in classes for _ in range(3)])
    explanations, episode = clf.explain(queries[:2])
    logits = clf.logits(queries[:2])
    for e, row in zip(explanations, logits):
        torch.testing.assert_close(e.logits, row, rtol=1e-5, atol=1e-5)
        # the truth unknown: the predicted class and the runner-up are explained
        assert e.label == -1 and list(e.matchings) == row.topk(2).indices.tolist()
    out = tmp_path / "match.png"
    assert predict_main(["--checkpoint", trained["checkpoint"], "--support", support, "--query", *queries[:2],
                         "--explain", str(out)]) == 0
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["match_q0.png", "match_q1.png"]
    assert Image.open(tmp_path / "match_q0.png").size[0] > 100
    single = tmp_path / "one.png"
    assert predict_main(["--checkpoint", trained["checkpoint"], "--support", support, "--query", queries[0],
                         "--explain", str(single)]) == 0
    assert single.is_file()
    capfd.readouterr()
    assert predict_main(["--checkpoint", trained["checkpoint"], "--support", support, "--query", queries[0],
                         "--explain", str(tmp_path / "x.nope")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--explain" in err[0] and "x.nope" in err[0], err


def test_ship_model_writes_weights_that_give_the_checkpoints_logits(trained, tmp_path):
    """scripts/ship_model.py weights: the trained weights (or float16) without optimiser state and
    with the training machine's paths reset; the shipped file gives the checkpoint's logits."""
    import subprocess
    import sys
    script = os.path.join(ROOT, "scripts", "ship_model.py")
    for extra, tol in (([], 0.0), (["--float16"], 5e-2)):
        run = subprocess.run([sys.executable, script, "weights", trained["checkpoint"], "tiny", "--dir", str(tmp_path),
                              *extra], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        state = torch.load(tmp_path / "tiny.pt", weights_only=True)
        assert set(state) == {"config", "model", "source"}
        assert state["config"]["data"]["root"] == "data/folder" and state["config"]["meta"]["pretrained"] == ""
        assert (state["model"]["backbone.encoder.0.weight"].dtype == torch.float16) == bool(extra)
        support, queries = _support(trained, f"ship{len(extra)}", 1)
        classes = sorted(os.listdir(support))
        images = [os.path.join(support, c, os.listdir(os.path.join(support, c))[0]) for c in classes]
        shipped, ref = fewshot.load(str(tmp_path / "tiny.pt")), fewshot.load(trained["checkpoint"])
        torch.testing.assert_close(shipped.fit(images, classes).logits(queries),
                                   ref.fit(images, classes).logits(queries), rtol=tol, atol=tol)


def test_the_models_the_readme_ships_are_in_the_package():
    """The README's shipped-model table, the cards and the weights name the same models, so a
    checkout without the weight files (e.g. ignored by git) fails here instead of the tests
    below running over an empty list."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    table = readme.split("## Shipped models")[1].split("\n## ")[0]
    listed = sorted(re.findall(r"^\| `([\w-]+)` \|", table, re.M))
    cards = sorted(f[:-3] for f in os.listdir(fewshot.api.PRETRAINED_DIR) if f.endswith(".md"))
    assert listed and listed == cards == fewshot.models_available()


@pytest.mark.parametrize("name", fewshot.models_available())
def test_each_shipped_model_has_a_card_loads_and_classifies(name, trained, tmp_path, monkeypatch, capsys):
    """Every shipped model: under 1 MB, a card with its accuracy, loads by name, classifies generated
    images with predict.py and evaluates with eval.py by name on a plain folder, with no option to
    reset (the result file lands in runs/eval/ of the working folder, not in the package), and the
    result says when, from which commit and with which versions it was made."""
    from fewshot.cli import eval_main
    path = fewshot.api.resolve_checkpoint(name)
    assert os.path.getsize(path) < 1_000_000
    card = open(os.path.splitext(path)[0] + ".md").read()
    assert "Accuracy of the shipped weights" in card and "Licence" in card and "+-" in card
    support, queries = _support(trained, f"shipped_{name}", 1)
    assert predict_main(["--checkpoint", name, "--support", support, "--query", *queries, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["queries"]) == len(queries)
    monkeypatch.chdir(tmp_path)
    assert eval_main(["--checkpoint", name, "--dataset", "folder", "--data-root", trained["data"], "--split", "test",
                      "--episodes", "2", "--way", "3", "--query", "2"]) == 0
    written = [f for f in os.listdir(tmp_path / "runs" / "eval") if f.startswith(f"eval_{name}_folder_test_3way1shot")]
    assert len(written) == 1
    result = json.load(open(tmp_path / "runs" / "eval" / written[0]))
    assert os.path.isabs(result["config"]["data"]["root"]) and result["config"]["data"]["options"] == {}
    assert set(result["provenance"]) == {"time", "commit", "versions"}
    assert result["provenance"]["versions"]["torch"] == torch.__version__ and "T" in result["provenance"]["time"]


def test_api_takes_numpy_arrays_folders_and_scores(trained):
    """fit/predict on NumPy arrays [H, W, C] give what file paths give; fit takes a folder of
    class folders; score() is the accuracy; the repr says what the model is."""
    from PIL import Image
    support, queries = _support(trained, "numpy", 2)
    clf = fewshot.load(trained["checkpoint"])
    assert "not fitted" in repr(clf)
    clf.fit(support)
    assert len(clf.classes_) == 3 and "fitted to 3 classes" in repr(clf) and "deepemd/conv4" in repr(clf)
    by_path = clf.predict_proba(queries)
    arrays = [np.asarray(Image.open(q).convert("RGB")) for q in queries]
    torch.testing.assert_close(clf.predict_proba(arrays), by_path)
    torch.testing.assert_close(clf.predict_proba(np.stack(arrays)), by_path)             # [N, H, W, C]
    torch.testing.assert_close(clf.predict_proba([a.astype(np.float32) / 255 for a in arrays]), by_path,
                               atol=1e-5, rtol=0)
    files, labels = fewshot.api.support_folder(support)
    clf2 = fewshot.load(trained["checkpoint"]).fit([np.asarray(Image.open(f).convert("RGB")) for f in files], labels)
    torch.testing.assert_close(clf2.predict_proba(queries), by_path)
    truth = [os.path.basename(os.path.dirname(q)) for q in queries]
    predicted = clf.predict(queries)
    assert clf.score(queries, truth) == pytest.approx(sum(p == t for p, t in zip(predicted, truth)) / len(truth))
    with pytest.raises(fewshot.errors.FewShotError, match="not classes of the support set"):
        clf.score(queries, ["nope"] * len(queries))
    with pytest.raises(fewshot.errors.FewShotError, match="array .H, W. or .H, W, C."):
        clf.predict([np.zeros((4, 4, 5), dtype=np.uint8)])


def test_exif_orientation_is_applied(tmp_path):
    """A photo stored sideways with an EXIF orientation tag is read upright."""
    from PIL import Image

    from fewshot.data._image import load_image
    upright = np.zeros((20, 10, 3), dtype=np.uint8)
    upright[:5] = 255                                           # white band at the top
    stored = Image.fromarray(upright).rotate(-90, expand=True)  # turned clockwise, as a camera may store it
    exif = Image.Exif()
    exif[0x0112] = 8                                            # orientation: turn back 90 degrees to view
    stored.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    img = np.asarray(load_image(str(tmp_path / "phone.jpg")))
    assert img.shape == (20, 10, 3) and img[:5].mean() > 200 and img[-5:].mean() < 50
