import pytest
import torch

from fewshot.data import EpisodeSampler, ManifestSampler, build_dataset, build_transform, write_manifest
from fewshot.errors import DataError


@pytest.fixture
def dataset(folder_root):
    return build_dataset("folder", folder_root, "train").with_transform(
        build_transform("plain", 16))


def test_episode_structure(dataset):
    sampler = EpisodeSampler(dataset, n_way=5, n_shot=2, n_query=3, seed=7)
    ep = sampler.episode(0)
    assert ep.support_images.shape == (10, 3, 16, 16)
    assert ep.query_images.shape == (15, 3, 16, 16)
    assert ep.support_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert ep.query_labels.tolist() == [c for c in range(5) for _ in range(3)]
    assert len(set(ep.index.classes)) == 5
    assert not set(ep.index.support) & set(ep.index.query)
    # every image's true class is the episode class its label points to
    for items, labels in ((ep.index.support, ep.support_labels), (ep.index.query, ep.query_labels)):
        for i, y in zip(items, labels.tolist()):
            assert dataset.labels[i] == ep.index.classes[y]
            assert dataset.classes[dataset.labels[i]] == ep.classes[y]
    # loaded pixels are the dataset's pixels
    assert torch.equal(ep.query_images[4], dataset[ep.index.query[4]][0])


def test_determinism_under_seed(dataset):
    a = EpisodeSampler(dataset, 5, 1, 2, seed=3)
    b = EpisodeSampler(dataset, 5, 1, 2, seed=3)
    c = EpisodeSampler(dataset, 5, 1, 2, seed=4)
    first = [a.indices(i) for i in range(10)]
    assert [b.indices(i) for i in reversed(range(10))][::-1] == first  # order independent
    assert [c.indices(i) for i in range(10)] != first
    assert len({tuple(e.support) for e in first}) > 1  # episodes differ from each other
    assert a.indices(5) == a.episode(5).index


def test_class_too_small(folder_root):
    ds = build_dataset("folder", folder_root, "train")
    with pytest.raises(DataError, match=r"has 8 images; a 5-shot 4-query episode needs at least 9"):
        EpisodeSampler(ds, 5, 5, 4)
    with pytest.raises(DataError, match="has 6 classes; 7-way"):
        EpisodeSampler(ds, 7, 1, 1)


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_manifest_round_trip(dataset, tmp_path, suffix):
    sampler = EpisodeSampler(dataset, 4, 2, 3, seed=11)
    episodes = [sampler.indices(i) for i in range(6)]
    path = str(tmp_path / f"episodes{suffix}")
    write_manifest(path, dataset, episodes, n_shot=2, n_query=3)
    loaded = ManifestSampler(dataset, path)
    assert (loaded.n_way, loaded.n_shot, loaded.n_query, len(loaded)) == (4, 2, 3, 6)
    assert [loaded.indices(i) for i in range(6)] == episodes
    a, b = sampler.episode(2), loaded.episode(2)
    assert torch.equal(a.support_images, b.support_images) and torch.equal(a.query_labels, b.query_labels)


def test_manifest_errors(dataset, tmp_path):
    sampler = EpisodeSampler(dataset, 3, 1, 1, seed=0)
    path = str(tmp_path / "m.json")
    write_manifest(path, dataset, [sampler.indices(0)], 1, 1)
    text = open(path).read()
    first = dataset.relative_path(sampler.indices(0).support[0])
    open(path, "w").write(text.replace(first, "gone/nowhere.png"))
    with pytest.raises(DataError, match="gone/nowhere.png"):
        ManifestSampler(dataset, path)
    with pytest.raises(DataError, match="does not exist"):
        ManifestSampler(dataset, str(tmp_path / "none.json"))
    open(path, "w").write("{}")
    with pytest.raises(DataError, match="format"):
        ManifestSampler(dataset, path)
