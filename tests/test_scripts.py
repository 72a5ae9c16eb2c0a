"""Scripts shipped beside the package: the WordNet class-tree builder."""
import json
import os
import subprocess
import sys

import pytest

from fewshot.emd.hierarchy import load_class_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DATA_NOUN = """  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
00001740 03 n 01 entity 0 000 | that which is perceived
00015388 03 n 01 animal 0 001 @ 00001740 n 0000 | a living organism
00020000 03 n 01 canine 0 001 @ 00015388 n 0000 | a member of the dog family
02084071 05 n 02 dog 0 domestic_dog 0 001 @ 00020000 n 0000 | a member of the genus Canis
02110341 05 n 01 dalmatian 0 001 @ 02084071 n 0000 | a large breed
02099601 05 n 02 golden_retriever 0 retriever 0 001 @ 02084071 n 0000 | an English breed
01532829 05 n 01 house_finch 0 001 @ 00015388 n 0000 | small finch
"""


def test_wordnet_tree_merges_single_child_chains(tmp_path):
    (tmp_path / "data.noun").write_text(DATA_NOUN)
    (tmp_path / "train.csv").write_text("filename,label\na.jpg,n02110341\nb.jpg,n02099601\n"
                                        "c.jpg,n01532829\nd.jpg,n02110341\n")
    out = tmp_path / "tree.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "wordnet_tree.py"), "--wordnet",
                    str(tmp_path), "--classes", str(tmp_path / "train.csv"), "--out", str(out)],
                   check=True, capture_output=True)
    tree = json.load(open(out))
    assert tree["nodes"][:3] == ["n02110341", "n02099601", "n01532829"]
    named = dict(zip(tree["nodes"], zip(tree["parents"], tree["lengths"])))
    # dog -> canine -> animal: canine has one child and is merged into an edge of length 2
    assert "n00020000" not in named and named["n02084071"][1] == 2.0
    assert tree["nodes"][named["n02084071"][0]] == "n00015388"
    assert named["n02110341"] == (tree["nodes"].index("n02084071"), 1.0)
    assert tree["labels"][0] == "dalmatian"
    loss = load_class_tree(str(out), ["n01532829", "n02099601", "n02110341"])
    assert loss is not None
    bad = tmp_path / "bad.txt"
    bad.write_text("n99999999\n")
    run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "wordnet_tree.py"), "--wordnet",
                          str(tmp_path), "--classes", str(bad), "--out", str(out)], capture_output=True, text=True)
    assert run.returncode != 0 and "n99999999" in run.stderr


@pytest.mark.parametrize("name", ["miniimagenet_wordnet.json", "imagenet_wordnet.json"])
def test_shipped_class_trees_load(name):
    path = os.path.join(ROOT, "configs", "trees", name)
    tree = json.load(open(path))
    classes = tree["nodes"][:100]
    load_class_tree(path, classes)
    assert len(set(tree["nodes"])) == len(tree["nodes"]) and tree["parents"].count(-1) == 1


@pytest.mark.timeout(600)
def test_gpu_recipe_smoke_on_cpu_with_two_processes(csv_root, tmp_path):
    """scripts/reproduce_miniimagenet.sh in SMOKE mode: torchrun with 2 CPU processes (gloo),
    one step of pretraining and of meta-training, then 1-shot and 5-shot evaluation."""
    out = tmp_path / "run"
    env = dict(os.environ, SMOKE="1", PYTHON=sys.executable, OMP_NUM_THREADS="1")
    run = subprocess.run(["bash", os.path.join(ROOT, "scripts", "reproduce_miniimagenet.sh"), csv_root,
                          str(out), "model.backbone_options.drop_rate=0.0"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for path in ("pretrain/best.pt", "meta/best.pt", "eval_test_1shot.json", "eval_test_5shot.json"):
        assert (out / path).is_file(), path
    shot5 = json.load(open(out / "eval_test_5shot.json"))
    assert shot5["n_shot"] == 5 and shot5["episodes"] == 2 and shot5["solver"] == "exact"
    times = (out / "times.txt").read_text()
    assert "pretrain:" in times and "nproc 2" in times
    assert "on cpu x 2 processes" in run.stdout + run.stderr        # DistributedDataParallel ran


def test_cub_split_from_deepemd_csvs(tmp_path):
    """scripts/cub_split.py turns the DeepEMD/FEAT split CSVs into cub_official's split.json."""
    rows = {"train": ["001.A", "001.A", "003.C"], "val": ["002.B"], "test": ["004.D", "005.E"]}
    for name, labels in rows.items():
        (tmp_path / f"{name}.csv").write_text("filename, label, concept_label\n" + "".join(
            f"img{i}.jpg,{label},1,2\n" for i, label in enumerate(labels)))
    out = tmp_path / "split.json"
    script = os.path.join(ROOT, "scripts", "cub_split.py")
    run = subprocess.run([sys.executable, script, "--csv-dir", str(tmp_path), "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.load(open(out)) == {"train": ["001.A", "003.C"], "val": ["002.B"], "test": ["004.D", "005.E"]}
    (tmp_path / "test.csv").write_text("filename,label\nx.jpg,001.A\n")
    run = subprocess.run([sys.executable, script, "--csv-dir", str(tmp_path), "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "001.A" in run.stderr and "Traceback" not in run.stderr


def test_plot_results_and_curves(tmp_path):
    """scripts/plot_results.py draws eval.py JSON files; a file that is not one is named."""
    files = []
    for i, (acc, seconds) in enumerate(((45.0, 10.0), (47.5, 300.0))):
        path = tmp_path / f"r{i}.json"
        path.write_text(json.dumps({"accuracy": acc, "ci95": 0.6, "episodes": 100, "seconds": seconds,
                                    "method": "deepemd", "eval_solver": "exact", "n_shot": 1}))
        files.append(str(path))
    out = tmp_path / "results.png"
    script = os.path.join(ROOT, "scripts", "plot_results.py")
    run = subprocess.run([sys.executable, script, *files, "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "bad.json").write_text("{}")
    run = subprocess.run([sys.executable, script, str(tmp_path / "bad.json"), "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "bad.json" in run.stderr and "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "plot_curves.py"), str(tmp_path)],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "no TensorBoard" in run.stderr


def test_episode_benchmark_times_the_emd_layer(tmp_path):
    """benchmarks/episodes.py on tiny random images: rows for 1 and 5 shots, and the EMD
    layer's time measured through the model's solvers (5-shot evaluation solves the SFC
    problems, so it is positive)."""
    out = tmp_path / "episodes.json"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "episodes.py"), "--backbone", "conv4",
                          "--shots", "1", "5", "--train-steps", "1", "--episodes", "2", "--episodes-5shot", "1",
                          "--split-images", "32", "--image-size", "16", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["n_shot"] for r in rows] == [1, 5]
    assert rows[1]["eval_emd_s"] > 0 and 0 < rows[1]["train_emd_share"] < 1
