"""N-way K-shot episodes: sampling through learn2learn, fixed by seed, and manifests.

An :class:`EpisodeSampler` draws the task description of episode ``i`` with
learn2learn's ``TaskDataset`` (``NWays``, ``KShots``, ``LoadData``, ``RemapLabels``)
under a Python RNG seeded by ``(seed, i)``: the same seed gives the same episodes in
any order, on any machine. A manifest file (JSON or CSV) lists the support and query
images of fixed episodes so that methods can be compared on identical episodes.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import random
from dataclasses import dataclass
from typing import Iterator, List, Sequence, Union

import torch

from .._l2l import l2l_data
from ..errors import DataError
from .datasets import ImageDataset

MANIFEST_FORMAT = "fewshot-episodes-v1"


@dataclass
class EpisodeIndex:
    """Which dataset images make up one episode (no pixels).

    ``classes``: original class index per episode label (label ``c`` <-> ``classes[c]``).
    ``support``: dataset indices [n_way * n_shot], class-major (label = position // n_shot).
    ``query``: dataset indices [n_way * n_query], class-major.
    """
    classes: List[int]
    support: List[int]
    query: List[int]

    @property
    def n_way(self) -> int:
        return len(self.classes)

    def labels(self, n_per_class: int) -> torch.Tensor:
        return torch.arange(self.n_way).repeat_interleave(n_per_class)


@dataclass
class Episode:
    """One N-way K-shot task.

    support_images: [n_way * n_shot, C, H, W]; support_labels: [n_way * n_shot] in 0..n_way-1.
    query_images: [n_way * n_query, C, H, W]; query_labels: [n_way * n_query].
    classes: original class names, ``classes[c]`` is episode label ``c``.
    index: the dataset indices behind the images.
    """
    support_images: torch.Tensor
    support_labels: torch.Tensor
    query_images: torch.Tensor
    query_labels: torch.Tensor
    classes: List[str]
    index: EpisodeIndex

    def to(self, device: Union[str, torch.device]) -> "Episode":
        return Episode(self.support_images.to(device, non_blocking=True),
                       self.support_labels.to(device, non_blocking=True),
                       self.query_images.to(device, non_blocking=True),
                       self.query_labels.to(device, non_blocking=True), self.classes, self.index)


@contextlib.contextmanager
def _seeded_python_random(seed: str) -> Iterator[None]:
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def check_class_sizes(dataset: ImageDataset, needed: int, what: str) -> None:
    """Raise DataError naming the first class with fewer than ``needed`` images."""
    for c, idx in dataset.indices_by_class().items():
        if len(idx) < needed:
            where = os.path.dirname(dataset.paths[idx[0]]) if idx else dataset.root
            raise DataError(f"class {dataset.classes[c]!r} of {dataset.name or 'the dataset'} "
                            f"({where}) has {len(idx)} images; {what} needs at least {needed}")


class EpisodeSampler:
    """Episodes ``0, 1, 2, ...`` of ``dataset``, each fixed by ``(seed, i)``.

    Args:
        dataset: the split to sample from (its transform is applied on load).
        n_way, n_shot, n_query: classes per episode, support and query images per class.
        seed: fixes every episode.
        num_episodes: length reported by ``len()`` (episodes past it can still be drawn).
    """

    def __init__(self, dataset: ImageDataset, n_way: int, n_shot: int, n_query: int,
                 seed: int = 0, num_episodes: int = 0):
        if n_way < 2 or n_shot < 1 or n_query < 1:
            raise DataError(f"episodes need n_way >= 2, n_shot >= 1, n_query >= 1; got "
                            f"{n_way}-way {n_shot}-shot {n_query}-query")
        if len(dataset.classes) < n_way:
            raise DataError(f"{dataset.name or 'dataset'} at {dataset.root!r} has "
                            f"{len(dataset.classes)} classes; {n_way}-way episodes need {n_way}")
        check_class_sizes(dataset, n_shot + n_query,
                          f"a {n_shot}-shot {n_query}-query episode")
        self.dataset, self.n_way, self.n_shot, self.n_query = dataset, n_way, n_shot, n_query
        self.seed, self.num_episodes = seed, num_episodes
        data = l2l_data()
        by_class = dataset.indices_by_class()
        meta = data.MetaDataset(dataset, labels_to_indices=by_class,
                                indices_to_labels=dict(enumerate(dataset.labels)))
        T = data.transforms
        self.taskset = data.TaskDataset(
            meta, task_transforms=[T.NWays(meta, n_way), T.KShots(meta, n_shot + n_query),
                                   T.LoadData(meta), T.RemapLabels(meta)], num_tasks=-1)

    def __len__(self) -> int:
        return self.num_episodes

    def _description(self, i: int):
        with _seeded_python_random(f"fewshot:{self.seed}:{i}"):
            return self.taskset.sample_task_description()

    def _index_from(self, items: Sequence[int]) -> EpisodeIndex:
        classes: List[int] = []
        members: dict = {}
        for idx in items:
            y = self.dataset.labels[idx]
            if y not in members:
                classes.append(y)
                members[y] = []
            members[y].append(idx)
        k = self.n_shot
        support = [i for c in classes for i in members[c][:k]]
        query = [i for c in classes for i in members[c][k:]]
        return EpisodeIndex(classes, support, query)

    def indices(self, i: int) -> EpisodeIndex:
        """The dataset indices of episode ``i`` (nothing is loaded)."""
        return self._index_from([d.index for d in self._description(i)])

    def episode(self, i: int) -> Episode:
        """Episode ``i`` with images loaded (learn2learn ``LoadData`` + ``RemapLabels``)."""
        description = self._description(i)
        images, l2l_labels = self.taskset.get_task(description)
        index = self._index_from([d.index for d in description])
        order = {idx: pos for pos, idx in enumerate(d.index for d in description)}
        # learn2learn's remapped labels follow its own class order; ours is class-major.
        remap = {int(l2l_labels[order[index.support[c * self.n_shot]]]): c
                 for c in range(self.n_way)}
        if sorted(remap) != list(range(self.n_way)):
            raise RuntimeError("learn2learn returned inconsistent episode labels")
        return _assemble(self.dataset, index, self.n_shot, self.n_query,
                         images=images, positions=order)


def _assemble(dataset: ImageDataset, index: EpisodeIndex, n_shot: int, n_query: int,
              images: torch.Tensor = None, positions: dict = None) -> Episode:
    def gather(items: List[int]) -> torch.Tensor:
        if images is not None:
            return images[[positions[i] for i in items]]
        return torch.stack([dataset[i][0] for i in items])

    return Episode(gather(index.support), index.labels(n_shot), gather(index.query),
                   index.labels(n_query), [dataset.classes[c] for c in index.classes], index)


class ManifestSampler:
    """Fixed episodes read from a manifest file (see :func:`write_manifest`)."""

    def __init__(self, dataset: ImageDataset, path: str):
        self.dataset, self.path = dataset, path
        spec = read_manifest(path)
        self.n_way, self.n_shot, self.n_query = spec["n_way"], spec["n_shot"], spec["n_query"]
        lookup = dataset.index_of()
        class_of = {name: c for c, name in enumerate(dataset.classes)}
        self._episodes: List[EpisodeIndex] = []
        for e, ep in enumerate(spec["episodes"]):
            def resolve(rel: str) -> int:
                if rel not in lookup:
                    raise DataError(f"manifest {path!r}, episode {e}: image {rel!r} is not in "
                                    f"{dataset.name or 'the dataset'} at {dataset.root!r}")
                return lookup[rel]
            missing = [c for c in ep["classes"] if c not in class_of]
            if missing:
                raise DataError(f"manifest {path!r}, episode {e}: classes {missing} are not in "
                                f"{dataset.name or 'the dataset'}")
            index = EpisodeIndex([class_of[c] for c in ep["classes"]],
                                 [resolve(p) for p in ep["support"]], [resolve(p) for p in ep["query"]])
            for part, items, k in (("support", index.support, self.n_shot),
                                   ("query", index.query, self.n_query)):
                want = [index.classes[j // k] for j in range(len(items))]
                if len(items) != self.n_way * k or [dataset.labels[i] for i in items] != want:
                    raise DataError(f"manifest {path!r}, episode {e}: {part} must list {k} images "
                                    f"of each class in 'classes' order")
            self._episodes.append(index)

    def __len__(self) -> int:
        return len(self._episodes)

    def indices(self, i: int) -> EpisodeIndex:
        return self._episodes[i]

    def episode(self, i: int) -> Episode:
        return _assemble(self.dataset, self._episodes[i], self.n_shot, self.n_query)


def write_manifest(path: str, dataset: ImageDataset, episodes: Sequence[EpisodeIndex],
                   n_shot: int, n_query: int) -> None:
    """Write ``episodes`` as JSON (``.json``) or CSV (anything else) with paths relative to the root."""
    from .._io import atomic_write_text
    n_way = episodes[0].n_way if episodes else 0
    if path.endswith(".json"):
        doc = {"format": MANIFEST_FORMAT, "dataset": dataset.name, "n_way": n_way,
               "n_shot": n_shot, "n_query": n_query,
               "episodes": [{"classes": [dataset.classes[c] for c in ep.classes],
                             "support": [dataset.relative_path(i) for i in ep.support],
                             "query": [dataset.relative_path(i) for i in ep.query]}
                            for ep in episodes]}
        atomic_write_text(path, json.dumps(doc, indent=1))
        return
    lines = ["episode,set,label,class,path"]
    for e, ep in enumerate(episodes):
        for part, items, k in (("support", ep.support, n_shot), ("query", ep.query, n_query)):
            for j, i in enumerate(items):
                row = [str(e), part, str(j // k), dataset.classes[ep.classes[j // k]],
                       dataset.relative_path(i)]
                lines.append(",".join(_csv_field(v) for v in row))
    atomic_write_text(path, "\n".join(lines) + "\n")


def _csv_field(value: str) -> str:
    return f'"{value}"' if ("," in value or '"' in value) else value


def read_manifest(path: str) -> dict:
    """Parse a JSON or CSV manifest into ``{n_way, n_shot, n_query, episodes: [...]}``."""
    if not os.path.isfile(path):
        raise DataError(f"episode manifest {path!r} does not exist")
    if path.endswith(".json"):
        try:
            with open(path) as f:
                doc = json.load(f)
            if doc.get("format") != MANIFEST_FORMAT:
                raise KeyError("format")
            spec = {k: doc[k] for k in ("n_way", "n_shot", "n_query", "episodes")}
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise DataError(f"episode manifest {path!r}: expected JSON with format "
                            f"{MANIFEST_FORMAT!r} and keys n_way, n_shot, n_query, episodes ({e})") from None
        return _check_manifest(spec, path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    expected = ["episode", "set", "label", "class", "path"]
    if not rows or list(rows[0].keys()) != expected:
        raise DataError(f"episode manifest {path!r}: expected CSV header {','.join(expected)}")
    episodes: dict = {}
    for lineno, row in enumerate(rows, start=2):
        try:
            e, label = int(row["episode"]), int(row["label"])
        except (TypeError, ValueError):
            raise DataError(f"episode manifest {path!r}, line {lineno}: episode and label must be "
                            f"integers") from None
        if row["set"] not in ("support", "query"):
            raise DataError(f"episode manifest {path!r}, line {lineno}: set must be support or query")
        ep = episodes.setdefault(e, {"classes": {}, "support": [], "query": []})
        ep["classes"][label] = row["class"]
        ep[row["set"]].append(row["path"])
    out = []
    for e in sorted(episodes):
        ep = episodes[e]
        out.append({"classes": [ep["classes"][c] for c in sorted(ep["classes"])],
                    "support": ep["support"], "query": ep["query"]})
    first = out[0]
    n_way = len(first["classes"])
    return _check_manifest({"n_way": n_way, "n_shot": len(first["support"]) // n_way,
                            "n_query": len(first["query"]) // n_way, "episodes": out}, path)


def _check_manifest(spec: dict, path: str) -> dict:
    """``spec`` if it describes valid episodes, else DataError naming the file, episode and key."""
    where = f"episode manifest {path!r}"
    for key, low in (("n_way", 2), ("n_shot", 1), ("n_query", 1)):
        v = spec[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise DataError(f"{where}: {key} must be an integer >= {low}, got {v!r}")
    episodes = spec["episodes"]
    if not isinstance(episodes, list) or not episodes:
        raise DataError(f"{where}: 'episodes' must be a non-empty list of episodes, got {episodes!r:.60}")
    n_way = spec["n_way"]
    for e, ep in enumerate(episodes):
        if not isinstance(ep, dict) or sorted(ep) != ["classes", "query", "support"]:
            raise DataError(f"{where}, episode {e}: expected the keys classes, support and query")
        for key, n in (("classes", n_way), ("support", n_way * spec["n_shot"]),
                       ("query", n_way * spec["n_query"])):
            items = ep[key]
            if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
                raise DataError(f"{where}, episode {e}: '{key}' must be a list of strings")
            if len(items) != n:
                raise DataError(f"{where}, episode {e}: '{key}' lists {len(items)} entries; n_way "
                                f"{n_way}, n_shot {spec['n_shot']} and n_query {spec['n_query']} "
                                f"need {n}")
            if len(set(items)) != len(items):
                raise DataError(f"{where}, episode {e}: '{key}' lists an entry twice")
        both = set(ep["support"]) & set(ep["query"])
        if both:
            raise DataError(f"{where}, episode {e}: image {sorted(both)[0]!r} is both a support "
                            f"and a query image")
    return spec
