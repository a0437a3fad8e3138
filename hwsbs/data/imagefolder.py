"""``imagefolder``: ``DIR/train/<class>/*.jpg`` and ``DIR/val/<class>/...`` (or ``DIR/test/``).

Classes are the training class folders sorted by name; labels are their indices. Images are
decoded with PIL and converted to RGB.

Image size: with ``image_size`` unset, small images (both sides <= 64 px, e.g. the CIFAR-10 JPEG
archive) keep their size and get the CIFAR recipe (pad-and-crop, flip); larger ones get the
ImageNet recipe at 224 (random-resized crop and flip; resize and centre crop for validation).
An explicit ``image_size`` <= 64 selects the CIFAR recipe at that size, larger the ImageNet one.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from hwsbs.errors import DataError

from .datasets import DatasetBundle, register_dataset
from .seeded import AugmentedDataset
from .transforms import Transform, large_image_transform, small_image_transform

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SMALL_IMAGE_MAX",
    "ImageFolderDataset",
    "find_splits",
    "scan_split",
    "imagefolder",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Images whose sides are all at most this many pixels use the CIFAR recipe.
SMALL_IMAGE_MAX = 64
_DEFAULT_LARGE_SIZE = 224
_EXPECTED = "a directory with train/ and val/ (or test/), each holding one folder of images per class"


def _open_rgb(path: Path) -> Image.Image:
    """Decode an image fully (so errors surface here, not later) as RGB.

    An image with more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels is refused before it is
    decoded (PIL only warns up to twice that many): a small file that would decode to gigabytes
    is a decompression bomb, not a training image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        limit = Image.MAX_IMAGE_PIXELS
        size = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(size.group(1))} pixels" if size else "too many pixels"
        raise DataError(
            f"{path}: image of {pixels} is over the limit of {limit} (PIL.Image.MAX_IMAGE_PIXELS); "
            "refusing a possible decompression bomb"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:  # SyntaxError: some PIL parsers
        detail = " ".join(str(exc).split())
        raise DataError(f"{path}: cannot decode image ({detail})") from None


def find_splits(data_dir: Path | None) -> tuple[Path, Path]:
    """The ``(train, val)`` directories under ``data_dir``; ``val/`` is preferred over ``test/``.

    Raises:
        DataError: no data_dir, a missing directory, or no train/ or val/test/ inside it.
    """
    if data_dir is None:
        raise DataError(f"--data-dir is required for imagefolder: expected {_EXPECTED}")
    if not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir}: does not exist; expected {_EXPECTED}")
    train = data_dir / "train"
    if not train.is_dir():
        raise DataError(f"--data-dir {data_dir}: expected {_EXPECTED}; missing train/")
    for name in ("val", "test"):
        if (data_dir / name).is_dir():
            return train, data_dir / name
    raise DataError(f"--data-dir {data_dir}: expected {_EXPECTED}; missing val/ (or test/)")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def scan_split(split_dir: Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """List ``(path, label)`` samples of one split, sorted by class then file name.

    Args:
        split_dir: a directory of class folders.
        classes: the class names (label order) to use; None derives them from ``split_dir``
            (every folder, sorted by name). A split may lack some of the given classes.

    Raises:
        DataError: no class folders, an empty training class, a class unknown to ``classes``,
            or a split with no images at all.
    """
    folders = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{split_dir}: expected one folder of images per class; found no folders")
    is_reference = classes is None  # the training split defines the classes: none may be empty
    if classes is None:
        classes = folders
    index = {c: i for i, c in enumerate(classes)}
    samples: list[tuple[Path, int]] = []
    for name in folders:
        if name not in index:
            raise DataError(f"{split_dir}: class folder {name!r} does not exist in the training split")
        files = _images_in(split_dir / name)
        if not files and is_reference:
            exts = "/".join(e.lstrip(".") for e in IMAGE_EXTENSIONS[:4])
            raise DataError(f"{split_dir / name}: class folder holds no images ({exts}, ...)")
        samples += [(f, index[name]) for f in files]
    if not samples:
        raise DataError(f"{split_dir}: found no images in its class folders")
    return classes, samples


class ImageFolderDataset(AugmentedDataset):
    """Images decoded on access; ``transform`` receives an RGB PIL image."""

    def __init__(self, samples: list[tuple[Path, int]], transform: Transform | None, seed: int = 0) -> None:
        super().__init__(transform, seed)
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        return _open_rgb(path), label


@register_dataset("imagefolder")
def imagefolder(
    data_dir: Path | None = None, seed: int = 0, image_size: int | None = None, augment: bool = True
) -> DatasetBundle:
    """A directory of class folders; see the module docstring for sizes and augmentation.

    Args:
        data_dir: the directory holding ``train/`` and ``val/`` (or ``test/``).
        seed: seeds the augmentation stream.
        image_size: output side in pixels; None picks it from the first training image.
        augment: random crop and flip for training.

    Raises:
        DataError: a missing or malformed directory, or a first image that cannot be decoded.
    """
    train_dir, val_dir = find_splits(data_dir)
    classes, train_samples = scan_split(train_dir)
    _, val_samples = scan_split(val_dir, classes)
    if image_size is None:
        w, h = _open_rgb(train_samples[0][0]).size
        image_size = max(w, h) if max(w, h) <= SMALL_IMAGE_MAX else _DEFAULT_LARGE_SIZE
    if image_size <= SMALL_IMAGE_MAX:
        # resize=True is a no-op for images that already have the size, and makes odd ones fit.
        train_tf = small_image_transform(image_size, augment, IMAGENET_MEAN, IMAGENET_STD, resize=True)
        val_tf = small_image_transform(image_size, False, IMAGENET_MEAN, IMAGENET_STD, resize=True)
    else:
        train_tf = large_image_transform(image_size, augment, IMAGENET_MEAN, IMAGENET_STD)
        val_tf = large_image_transform(image_size, False, IMAGENET_MEAN, IMAGENET_STD)
    return DatasetBundle(
        "imagefolder",
        ImageFolderDataset(train_samples, train_tf, seed),
        ImageFolderDataset(val_samples, val_tf, seed),
        len(classes),
        3,
        (image_size, image_size),
        classes=classes,
    )
