"""Datasets, transforms and episodes."""
from .datasets import ImageDataset, build_dataset, chen_cub_split, datasets, read_split_csv
from .episodes import (Episode, EpisodeIndex, EpisodeSampler, ManifestSampler, check_class_sizes,
                       read_manifest, write_manifest)
from .augment import BatchAugment
from .transforms import build_transform, device_augment

__all__ = ["ImageDataset", "build_dataset", "chen_cub_split", "datasets", "read_split_csv",
           "Episode", "EpisodeIndex", "EpisodeSampler", "ManifestSampler", "check_class_sizes",
           "read_manifest", "write_manifest", "build_transform", "device_augment", "BatchAugment"]
