"""Datasets by name with deterministic splits. ``digits`` needs no files (scikit-learn ships it)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from hwsbs.errors import DataError

__all__ = ["DatasetBundle", "register_dataset", "list_datasets", "build_dataset", "make_loader", "take_subset"]


@dataclass
class DatasetBundle:
    """A train/validation pair and the geometry a model needs.

    A sequence dataset (``text``) yields ``(tokens, next tokens)`` of shape ``(sequence_length,)``
    each and sets ``sequence_length``; model builders that name that parameter receive it.
    """

    name: str  # dataset name as given to --data
    train: Dataset  # training split (augmented where the dataset has augmentation)
    val: Dataset  # held-out split used for every reported accuracy
    num_classes: int  # classifier outputs
    in_channels: int  # image channels
    image_size: tuple[int, int]  # (H, W) after transforms
    classes: list[str] | None = None  # class names in label order, where the dataset has them
    sequence_length: int | None = None  # tokens per sample of a sequence dataset (then num_classes: vocabulary)

    def geometry(self) -> dict[str, Any]:
        """The keyword arguments of :func:`hwsbs.models.build_model` this dataset implies."""
        return {
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "sequence_length": self.sequence_length,
        }


DatasetBuilder = Callable[..., DatasetBundle]
_DATASETS: dict[str, DatasetBuilder] = {}


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator registering ``fn(data_dir, seed, **options) -> DatasetBundle`` as ``name``.

    ``options`` are the keyword arguments of :func:`build_dataset` a dataset supports
    (``image_size``, ``augment``); a builder declares the ones it accepts as parameters.
    """

    def decorator(fn: DatasetBuilder) -> DatasetBuilder:
        _DATASETS[name] = fn
        return fn

    return decorator


def list_datasets() -> list[str]:
    """Sorted names of the known datasets."""
    return sorted(_DATASETS)


def take_subset(dataset: Dataset, n: int | None, seed: int) -> Dataset:
    """A deterministic random subset of ``n`` samples (all of them when n is None or larger)."""
    if n is None or n >= len(dataset):  # type: ignore[arg-type]  # torch's Dataset declares no __len__; ours are sized
        return dataset
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=gen)[:n].tolist()  # type: ignore[arg-type]  # as above
    return Subset(dataset, idx)


def build_dataset(
    name: str,
    data_dir: str | Path | None = None,
    subset: int | None = None,
    seed: int = 0,
    *,
    image_size: int | None = None,
    augment: bool = True,
) -> DatasetBundle:
    """Build dataset ``name``; ``subset`` caps the training split (and the val split at a quarter).

    Args:
        name: a registered dataset (``digits``, ``cifar10``, ``cifar100``, ``imagefolder``, ...).
        data_dir: where its files are (unused by ``digits``).
        subset: keep this many training samples (a deterministic random subset) and a quarter
            as many validation samples.
        seed: seeds the subset choice and the augmentation stream.
        image_size: output side in pixels, for datasets that resize (``imagefolder``).
        augment: random training augmentation (crop, flip) where the dataset has it.

    Raises:
        DataError: an unknown dataset (listing the known ones), an option the dataset does not
            support, or missing/garbled files.
    """
    if name not in _DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    if subset is not None and subset <= 0:
        raise DataError(f"--subset must be a positive number of samples, got {subset}")
    builder = _DATASETS[name]
    # Pass only the options that differ from the defaults, so builders without them keep working.
    options: dict[str, object] = {}
    if image_size is not None:
        if image_size <= 0:
            raise DataError(f"--image-size must be a positive number of pixels, got {image_size}")
        options["image_size"] = image_size
    if not augment:
        options["augment"] = False
    accepted = inspect.signature(builder).parameters
    if "augment" not in accepted:
        options.pop("augment", None)  # a dataset without augmentation is already un-augmented
    if "image_size" in options and "image_size" not in accepted:
        raise DataError(f"dataset {name!r} does not support --image-size: its images have a fixed size")
    bundle = builder(data_dir=Path(data_dir) if data_dir is not None else None, seed=seed, **options)
    if subset is not None:
        bundle.train = take_subset(bundle.train, subset, seed)
        bundle.val = take_subset(bundle.val, max(subset // 4, 1), seed + 1)
    return bundle


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, seed: int, workers: int = 0, drop_last: bool = False
) -> DataLoader:
    """A DataLoader whose shuffling order is a function of ``seed`` alone.

    The loader's generator also supplies each worker's seed, from which
    :class:`~hwsbs.data.seeded.AugmentedDataset` seeds its augmentation: with ``workers > 0``,
    augmentation is a function of (``seed``, ``workers``).
    """
    if workers < 0:
        raise DataError(f"--workers must be 0 (load in the main process) or more, got {workers}")
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=gen,
        num_workers=workers,
        drop_last=drop_last,
        persistent_workers=workers > 0,
    )


@register_dataset("digits")
def digits(data_dir: Path | None = None, seed: int = 0) -> DatasetBundle:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes); 80/20 stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0 - 0.5) / 0.5  # pixels are 0..16; centre to [-1, 1]
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)

    def to_ds(xs, ys) -> TensorDataset:
        return TensorDataset(
            torch.tensor(xs, dtype=torch.float32).reshape(-1, 1, 8, 8), torch.tensor(ys, dtype=torch.long)
        )

    return DatasetBundle("digits", to_ds(x_tr, y_tr), to_ds(x_va, y_va), 10, 1, (8, 8))
