"""Datasets: ``digits`` and ``text`` (built in, no files) and, from files on disk, CIFAR, ImageFolder
and ``text --data-dir``."""

from __future__ import annotations

from . import cifar, imagefolder, text  # noqa: F401  (register cifar10, cifar100, imagefolder, text)
from .archive import ensure_cifar10_jpeg, extract_cifar10_subset, find_cifar10_archive
from .datasets import DatasetBundle, build_dataset, list_datasets, make_loader, register_dataset, take_subset

__all__ = [
    "DatasetBundle",
    "build_dataset",
    "list_datasets",
    "make_loader",
    "register_dataset",
    "take_subset",
    "ensure_cifar10_jpeg",
    "extract_cifar10_subset",
    "find_cifar10_archive",
]
