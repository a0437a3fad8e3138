"""Latency measurement: fixed threads, warm-up, repeats, median and spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import torch

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Timing", "TimingOptions", "time_callable", "sample_times", "summarise_times", "fixed_threads"]


@dataclass(frozen=True)
class Timing:
    """Repeated wall-clock measurements of one call, in seconds."""

    median_s: float
    std_s: float  # standard deviation over the repeats
    q1_s: float  # first quartile
    q3_s: float  # third quartile
    repeats: int

    @property
    def iqr_rel(self) -> float:
        """Interquartile range relative to the median (a robust spread)."""
        return (self.q3_s - self.q1_s) / self.median_s if self.median_s > 0 else 0.0


@contextmanager
def fixed_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (unchanged when None)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _quartiles(samples: list[float]) -> tuple[float, float]:
    if len(samples) < 2:
        return samples[0], samples[0]
    q = statistics.quantiles(samples, n=4, method="inclusive")
    return q[0], q[2]


@torch.inference_mode()
def sample_times(
    fn: Callable[[], object],
    *,
    warmup: int = 5,
    repeats: int = 20,
    device: torch.device | str = "cpu",
    min_time_s: float = 0.0,
) -> list[float]:
    """Seconds per call of ``fn()``: ``warmup`` untimed calls, then at least ``repeats`` timed ones.

    Each sample is one call (CUDA: synchronised before and after). With ``min_time_s`` the
    repeats continue until that much time is spent, so very fast calls get more samples.
    """
    cuda = torch.device(device).type == "cuda"
    for _ in range(max(warmup, 0)):
        fn()
    if cuda:
        torch.cuda.synchronize()
    samples: list[float] = []
    spent = 0.0
    while len(samples) < max(repeats, 1) or spent < min_time_s:
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - start
        samples.append(dt)
        spent += dt
        if len(samples) >= 50 * max(repeats, 1):
            break
    return samples


def summarise_times(samples: list[float]) -> Timing:
    """Median, standard deviation and quartiles of ``samples``."""
    q1, q3 = _quartiles(samples)
    std = statistics.stdev(samples) if len(samples) > 1 else 0.0
    return Timing(statistics.median(samples), std, q1, q3, len(samples))


class TimingOptions(TypedDict, total=False):
    """The keyword options of :func:`sample_times` (its defaults where one is left out)."""

    warmup: int
    repeats: int
    device: torch.device | str
    min_time_s: float


def time_callable(fn: Callable[[], object], **options: Unpack[TimingOptions]) -> Timing:
    """:func:`sample_times` summarised."""
    return summarise_times(sample_times(fn, **options))
