"""A dataset base class whose augmentation randomness is reproducible from a seed.

Where the randomness comes from (the design choice):

* In the main process (``DataLoader(num_workers=0)`` or direct indexing) the dataset owns a
  :class:`torch.Generator` seeded with the dataset's ``seed``; it keeps running across epochs, so
  every epoch sees fresh augmentation and the whole sequence is a function of ``seed`` (call
  :meth:`AugmentedDataset.reseed` or build the dataset again to replay it).
* In a DataLoader worker the generator is re-seeded from that worker's seed
  (``get_worker_info().seed``, i.e. ``base_seed + worker_id``). PyTorch draws ``base_seed`` from
  the loader's ``generator``, which :func:`hwsbs.data.make_loader` seeds from the run's seed, and
  hands each worker a fixed round-robin share of the batches. Augmentation is therefore a function
  of (seed, number of workers); changing the worker count changes which draws a sample gets.

This needs no ``worker_init_fn`` (so it also holds for a DataLoader built elsewhere, as long as it
has a seeded ``generator``), and never touches the global RNGs the training loop relies on.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, get_worker_info

from .transforms import Transform

__all__ = ["AugmentedDataset"]


class AugmentedDataset(Dataset):
    """Base class: subclasses implement ``__len__`` and ``load(index) -> (image, label)``."""

    def __init__(self, transform: Transform | None, seed: int = 0) -> None:
        self.transform = transform
        self.seed = seed
        self._gen: torch.Generator | None = None
        self._gen_key: tuple[str, int] | None = None

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, index: int) -> tuple[Any, int]:  # pragma: no cover - abstract
        """The untransformed sample ``index`` and its class label."""
        raise NotImplementedError

    def generator(self) -> torch.Generator:
        """The augmentation generator for the current process (see the module docstring)."""
        info = get_worker_info()
        key = ("main", self.seed) if info is None else ("worker", int(info.seed))
        if self._gen is None or self._gen_key != key:
            self._gen = torch.Generator().manual_seed(key[1])
            self._gen_key = key
        return self._gen

    def reseed(self, seed: int) -> None:
        """Restart the main-process augmentation stream from ``seed``."""
        self.seed = seed
        self._gen = None
        self._gen_key = None

    def __getitem__(self, index: int) -> tuple[Any, int]:
        sample, label = self.load(index)
        if self.transform is not None:
            sample = self.transform(sample, self.generator())
        return sample, label

    def __getstate__(self) -> dict[str, Any]:
        # Workers receive a pickled copy; each must start its own stream, never share one.
        state = self.__dict__.copy()
        state["_gen"] = None
        state["_gen_key"] = None
        return state
