"""Image transforms written with torch and PIL (torchvision is not a dependency).

Every transform is called as ``transform(x, gen)``: ``gen`` is the :class:`torch.Generator` that
supplies all of its randomness, so augmentation is reproducible from a seed (see
:class:`hwsbs.data.seeded.AugmentedDataset` for where the generator comes from). Deterministic
transforms ignore ``gen``.

Pixel pipelines keep images as ``uint8`` CHW tensors until :class:`Normalize`, which converts to
float: cropping and flipping bytes is cheaper than floats, and zero padding then means black, as
in the usual CIFAR recipe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = [
    "Transform",
    "Compose",
    "ToUint8Tensor",
    "PadRandomCrop",
    "RandomHorizontalFlip",
    "Normalize",
    "Resize",
    "CenterCrop",
    "RandomResizedCrop",
    "small_image_transform",
    "large_image_transform",
]


def _randint(low: int, high: int, gen: torch.Generator | None) -> int:
    """A uniform integer in ``[low, high]`` (inclusive) drawn from ``gen``."""
    return int(torch.randint(low, high + 1, (1,), generator=gen).item())


def _uniform(low: float, high: float, gen: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen).item())


class Transform:
    """Base class: ``__call__(x, gen)`` returns the transformed image."""

    def __call__(self, x: Any, gen: torch.Generator | None = None) -> Any:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Compose(Transform):
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any, gen: torch.Generator | None = None) -> Any:
        for t in self.transforms:
            x = t(x, gen)
        return x


class ToUint8Tensor(Transform):
    """PIL image or HWC ``uint8`` array -> CHW ``uint8`` RGB tensor (tensors pass through)."""

    def __call__(self, x: Any, gen: torch.Generator | None = None) -> Tensor:
        if isinstance(x, Tensor):
            return x
        if isinstance(x, Image.Image):
            x = x.convert("RGB")
        arr = np.array(x, dtype=np.uint8)  # a writable copy: torch refuses read-only buffers
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class PadRandomCrop(Transform):
    """Zero-pad a CHW tensor by ``padding`` on each side, then crop ``size`` x ``size`` at random."""

    def __init__(self, size: int, padding: int = 4) -> None:
        self.size = size
        self.padding = padding

    def __call__(self, x: Tensor, gen: torch.Generator | None = None) -> Tensor:
        c, h, w = x.shape
        p = self.padding
        padded = x.new_zeros((c, h + 2 * p, w + 2 * p))
        padded[:, p : p + h, p : p + w] = x
        top = _randint(0, h + 2 * p - self.size, gen)
        left = _randint(0, w + 2 * p - self.size, gen)
        return padded[:, top : top + self.size, left : left + self.size].contiguous()


class RandomHorizontalFlip(Transform):
    """Mirror a CHW tensor left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, x: Tensor, gen: torch.Generator | None = None) -> Tensor:
        if float(torch.rand((), generator=gen).item()) < self.p:
            return x.flip(-1)
        return x


class Normalize(Transform):
    """``uint8`` CHW -> float32 ``(x / 255 - mean) / std`` per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: Tensor, gen: torch.Generator | None = None) -> Tensor:
        return (x.to(torch.float32).div(255.0) - self._mean) / self._std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class Resize(Transform):
    """Resize a PIL image: the shorter side to ``size`` or, with ``exact``, to ``size`` x ``size``."""

    def __init__(self, size: int, exact: bool = False) -> None:
        self.size = size
        self.exact = exact

    def __call__(self, x: Image.Image, gen: torch.Generator | None = None) -> Image.Image:
        w, h = x.size
        if self.exact:
            target = (self.size, self.size)
        elif w <= h:
            target = (self.size, max(1, round(h * self.size / w)))
        else:
            target = (max(1, round(w * self.size / h)), self.size)
        if target == (w, h):
            return x
        return x.resize(target, Image.Resampling.BILINEAR)


class CenterCrop(Transform):
    """Crop the central ``size`` x ``size`` region of a PIL image."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, x: Image.Image, gen: torch.Generator | None = None) -> Image.Image:
        w, h = x.size
        left = (w - self.size) // 2
        top = (h - self.size) // 2
        return x.crop((left, top, left + self.size, top + self.size))


class RandomResizedCrop(Transform):
    """Crop a random area/aspect-ratio region of a PIL image and resize it to ``size`` x ``size``.

    Same sampling as the usual Inception-style crop: up to 10 tries of an area fraction in
    ``scale`` and a log-uniform aspect ratio in ``ratio``; otherwise the largest central crop
    whose ratio is clamped to ``ratio``.
    """

    def __init__(
        self, size: int, scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    ) -> None:
        self.size = size
        self.scale = scale
        self.ratio = ratio

    def box(self, width: int, height: int, gen: torch.Generator | None) -> tuple[int, int, int, int]:
        """The ``(left, top, right, bottom)`` crop box for an image of the given size."""
        area = width * height
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target_area = area * _uniform(self.scale[0], self.scale[1], gen)
            aspect = math.exp(_uniform(log_lo, log_hi, gen))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = _randint(0, height - h, gen)
                left = _randint(0, width - w, gen)
                return left, top, left + w, top + h
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, x: Image.Image, gen: torch.Generator | None = None) -> Image.Image:
        box = self.box(x.size[0], x.size[1], gen)
        return x.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)


def small_image_transform(
    size: int,
    train: bool,
    mean: Sequence[float],
    std: Sequence[float],
    padding: int | None = None,
    resize: bool = False,
) -> Compose:
    """The CIFAR recipe: pad-and-random-crop plus horizontal flip for training, then normalise.

    Args:
        size: output side in pixels (32 for CIFAR).
        train: add the random crop and flip (evaluation only normalises).
        mean: per-channel mean of ``x / 255``.
        std: per-channel standard deviation of ``x / 255``.
        padding: zero padding before the random crop; ``size // 8`` (4 for 32) by default.
        resize: inputs are PIL images of any size that are first resized to ``size`` x ``size``.
    """
    steps: list[Transform] = []
    if resize:
        steps.append(Resize(size, exact=True))
    steps.append(ToUint8Tensor())
    if train:
        steps += [PadRandomCrop(size, size // 8 if padding is None else padding), RandomHorizontalFlip()]
    steps.append(Normalize(mean, std))
    return Compose(steps)


def large_image_transform(
    size: int, train: bool, mean: Sequence[float], std: Sequence[float], crop_fraction: float = 0.875
) -> Compose:
    """The ImageNet recipe for PIL images.

    Training: random-resized crop to ``size`` and horizontal flip. Evaluation: resize the shorter
    side to ``size / crop_fraction`` (256 for 224) and take the central ``size`` x ``size``.
    """
    if train:
        steps: list[Transform] = [RandomResizedCrop(size), ToUint8Tensor(), RandomHorizontalFlip()]
    else:
        steps = [Resize(round(size / crop_fraction)), CenterCrop(size), ToUint8Tensor()]
    steps.append(Normalize(mean, std))
    return Compose(steps)
