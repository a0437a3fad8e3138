"""CIFAR-10 and CIFAR-100 from the official python release (``cifar-10-batches-py`` /
``cifar-100-python``): pickled dicts with ``b'data'`` (N x 3072 uint8, channel-major RGB) and
``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hwsbs.errors import DataError

from .datasets import DatasetBundle, register_dataset
from .safe_pickle import load_plain_pickle
from .seeded import AugmentedDataset
from .transforms import Transform, small_image_transform

__all__ = ["CifarRelease", "CIFAR10", "CIFAR100", "CifarDataset", "find_release_dir", "load_cifar_split"]


@dataclass(frozen=True)
class CifarRelease:
    """Where one CIFAR python release keeps what, and its normalisation statistics."""

    title: str  # for messages: "CIFAR-10"
    dirname: str  # the directory the release tarball unpacks to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str  # key of the label list in every batch
    names_key: str  # key of the class-name list in the meta file
    num_classes: int
    mean: tuple[float, float, float]  # per-channel mean of x / 255 over the training set
    std: tuple[float, float, float]

    def describe(self) -> str:
        files = self.train_files + self.test_files
        listed = (
            f"data_batch_1..{len(self.train_files)} and {', '.join(self.test_files)}"
            if len(self.train_files) > 1
            else ", ".join(files)
        )
        return f"the {self.title} python release directory {self.dirname!r} with {listed}"


CIFAR10 = CifarRelease(
    title="CIFAR-10",
    dirname="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)

CIFAR100 = CifarRelease(
    title="CIFAR-100",
    dirname="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)

_PIXELS = 3 * 32 * 32


def find_release_dir(data_dir: Path | None, release: CifarRelease) -> Path:
    """The release directory: ``data_dir`` itself or ``data_dir / release.dirname``.

    Raises:
        DataError: no data_dir, or neither location holds every batch file (names the first
            missing one).
    """
    if data_dir is None:
        raise DataError(f"--data-dir is required: expected {release.describe()} or its parent")
    required = release.train_files + release.test_files
    candidates = [data_dir, data_dir / release.dirname]
    for cand in candidates:
        if cand.is_dir() and all((cand / f).is_file() for f in required):
            return cand
    if not data_dir.exists():
        raise DataError(f"--data-dir {data_dir}: does not exist; expected {release.describe()} or its parent")
    # Report against the candidate that looks most like the release (the most batch files; on a
    # tie the release-named subdirectory, since its presence says where the user put the files).
    best = max(candidates[::-1], key=lambda c: sum((c / f).is_file() for f in required) if c.is_dir() else -1)
    missing = next(f for f in required if not (best / f).is_file())
    where = "" if best == data_dir else f" in {best}"
    raise DataError(f"--data-dir {data_dir}: expected {release.describe()} or its parent; missing {missing}{where}")


def _get(batch: dict[Any, Any], key: str) -> Any:
    """``batch[key]`` whether the file's keys are bytes (Python 2 pickle) or str."""
    if key.encode() in batch:
        return batch[key.encode()]
    return batch.get(key)


def _labels(path: Path, lab: Any) -> np.ndarray:
    """A batch's labels as int64, refusing what would be silently truncated or wrapped.

    Raises:
        DataError: labels that are not numbers, or not whole numbers (``1.5``, NaN).
    """
    try:
        arr = np.asarray(lab)
    except (ValueError, TypeError) as exc:  # ragged nesting
        raise DataError(f"{path}: labels: expected a list of integers ({' '.join(str(exc).split())[:120]})") from None
    arr = arr.reshape(-1)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        if arr.size:  # an empty list comes back as float64; other kinds are strings, objects, booleans
            raise DataError(f"{path}: labels: expected integers, got {arr.dtype} values (e.g. {arr.tolist()[0]!r})")
    if np.issubdtype(arr.dtype, np.floating) and arr.size:
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{path}: labels: expected whole numbers, label {i} is {arr.tolist()[i]!r} "
                f"({bad.size} label(s) are fractional or not finite)"
            )
    return arr.astype(np.int64)


def load_cifar_split(release_dir: Path, files: Sequence[str], release: CifarRelease) -> tuple[Tensor, Tensor]:
    """Read and concatenate batch files.

    Returns:
        ``(images, labels)``: uint8 N x 3 x 32 x 32 and int64 N.

    Raises:
        DataError: a file that is not a plain pickle of the expected dict, with a wrong data
            shape, a label count that does not match, or a label out of range.
    """
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for name in files:
        path = release_dir / name
        batch = load_plain_pickle(path)
        expected = f"expected a {release.title} batch dict with 'data' (N x {_PIXELS} uint8) and {release.label_key!r}"
        if not isinstance(batch, dict):
            raise DataError(f"{path}: {expected}; got a {type(batch).__name__}")
        data, lab = _get(batch, "data"), _get(batch, release.label_key)
        if not isinstance(data, np.ndarray) or lab is None:
            raise DataError(f"{path}: {expected}; keys are {sorted(map(str, batch))}")
        if data.ndim != 2 or data.shape[1] != _PIXELS or data.dtype != np.uint8:
            raise DataError(f"{path}: {expected}; 'data' is {data.dtype} {tuple(data.shape)}")
        if data.shape[0] == 0:
            raise DataError(f"{path}: {expected}; the batch holds no images")
        lab_arr = _labels(path, lab)
        if lab_arr.shape[0] != data.shape[0]:
            raise DataError(f"{path}: {expected}; {data.shape[0]} images but {lab_arr.shape[0]} labels")
        if lab_arr.size and (lab_arr.min() < 0 or lab_arr.max() >= release.num_classes):
            raise DataError(
                f"{path}: labels must lie in 0..{release.num_classes - 1}, found {lab_arr.min()}..{lab_arr.max()}"
            )
        images.append(data)
        labels.append(lab_arr)
    x = torch.from_numpy(np.concatenate(images).reshape(-1, 3, 32, 32))
    y = torch.from_numpy(np.concatenate(labels))
    return x, y


def _class_names(release_dir: Path, release: CifarRelease) -> list[str] | None:
    """Class names from the meta file, or None when it is absent (it is not needed to train)."""
    path = release_dir / release.meta_file
    if not path.is_file():
        return None
    meta = load_plain_pickle(path)
    names = _get(meta, release.names_key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != release.num_classes:
        raise DataError(f"{path}: expected a dict with {release.names_key!r}, a list of {release.num_classes} names")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


class CifarDataset(AugmentedDataset):
    """In-memory uint8 images with labels; ``transform`` receives a uint8 CHW tensor."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Transform | None, seed: int = 0) -> None:
        super().__init__(transform, seed)
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def load(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])


def build_cifar(data_dir: Path | None, seed: int, release: CifarRelease, augment: bool = True) -> DatasetBundle:
    """Both splits of a CIFAR release; training gets pad-4 random crop and flip unless ``augment`` is off."""
    root = find_release_dir(data_dir, release)
    classes = _class_names(root, release)
    x_tr, y_tr = load_cifar_split(root, release.train_files, release)
    x_te, y_te = load_cifar_split(root, release.test_files, release)
    train_tf = small_image_transform(32, augment, release.mean, release.std)
    val_tf = small_image_transform(32, False, release.mean, release.std)
    name = release.title.lower().replace("-", "")
    return DatasetBundle(
        name,
        CifarDataset(x_tr, y_tr, train_tf, seed),
        CifarDataset(x_te, y_te, val_tf, seed),
        release.num_classes,
        3,
        (32, 32),
        classes=classes,
    )


@register_dataset("cifar10")
def cifar10(data_dir: Path | None = None, seed: int = 0, augment: bool = True) -> DatasetBundle:
    """CIFAR-10 (50,000 train / 10,000 test, 32x32); ``--data-dir`` is ``cifar-10-batches-py`` or its parent."""
    return build_cifar(data_dir, seed, CIFAR10, augment)


@register_dataset("cifar100")
def cifar100(data_dir: Path | None = None, seed: int = 0, augment: bool = True) -> DatasetBundle:
    """CIFAR-100, fine labels (50,000 / 10,000, 32x32); ``--data-dir`` is ``cifar-100-python`` or its parent."""
    return build_cifar(data_dir, seed, CIFAR100, augment)
