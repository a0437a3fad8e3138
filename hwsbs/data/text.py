"""``text``: byte-level language modelling with no download.

Without ``--data-dir`` the corpus is CPython's own help texts (``pydoc_data.topics``, the pages
``help("if")`` shows; about 0.46 MB of English under the PSF licence), which every CPython install
ships. With ``--data-dir DIR`` it is the UTF-8 ``*.txt`` files under DIR, in sorted path order.

Tokens are the corpus's UTF-8 bytes (vocabulary 256). A sample is a window of ``block`` tokens and
its next-token targets, ``x = bytes[i:i+L]`` and ``y = bytes[i+1:i+L+1]``. The first 90% of the
bytes train and the last 10% validate; no window crosses the boundary, so no validation byte is
ever a training input or target.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from hwsbs.errors import DataError

from .datasets import DatasetBundle, register_dataset

__all__ = ["VOCAB_SIZE", "DEFAULT_BLOCK", "ByteWindows", "builtin_corpus", "read_text_dir", "split_windows"]

VOCAB_SIZE = 256  # byte-level tokens: any UTF-8 text, no tokenizer to ship
DEFAULT_BLOCK = 64  # tokens per sample: long enough for word structure, short enough for CPU runs
VAL_FRACTION = 0.1  # the tail of the corpus held out for validation
MAX_BYTES = 64 * 2**20  # --data-dir cap: the whole corpus is held in memory as one tensor


class ByteWindows(Dataset):
    """Fixed-length windows of a byte tensor, each with its one-step-shifted targets."""

    def __init__(self, data: Tensor, starts: Tensor, block: int) -> None:
        self.data = data  # uint8 tokens of the whole corpus (shared by both splits)
        self.starts = starts  # first input position of every window
        self.block = block  # tokens per window

    def __len__(self) -> int:
        return int(self.starts.numel())

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        start = int(self.starts[index])
        chunk = self.data[start : start + self.block + 1].long()
        return chunk[:-1], chunk[1:]


def builtin_corpus() -> bytes:
    """CPython's help topics (``pydoc_data.topics``), joined in sorted topic order, as UTF-8.

    Raises:
        DataError: this Python was installed without ``pydoc_data``.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise DataError(
            "--data text: this Python lacks pydoc_data (its help texts, the built-in corpus); "
            "pass --data-dir DIR with UTF-8 *.txt files"
        ) from None
    return "\n\n".join(topics[key] for key in sorted(topics)).encode("utf-8")


def read_text_dir(data_dir: Path, max_bytes: int = MAX_BYTES) -> bytes:
    """The UTF-8 ``*.txt`` files under ``data_dir`` (recursively, sorted by path), joined by newlines.

    Raises:
        DataError: not a directory, no ``*.txt`` file, more than ``max_bytes`` in all, or a file
            that is not UTF-8 text.
    """
    if not data_dir.is_dir():
        raise DataError(f"--data text: --data-dir {data_dir} is not a directory")
    files = sorted(
        (p for p in data_dir.rglob("*.txt") if p.is_file()), key=lambda p: p.relative_to(data_dir).as_posix()
    )
    if not files:
        raise DataError(f"--data text: no *.txt files under --data-dir {data_dir}")
    total = sum(p.stat().st_size for p in files)
    if total > max_bytes:  # checked before reading: a mistaken directory must not fill memory
        raise DataError(
            f"--data text: the *.txt files under {data_dir} hold {total / 2**20:.0f} MiB; "
            f"at most {max_bytes / 2**20:.0f} MiB is read"
        )
    parts = []
    for path in files:
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"--data text: {path} is not UTF-8 text (bad byte at offset {exc.start})") from None
        if b"\x00" in raw:  # valid UTF-8, but a binary file renamed .txt
            raise DataError(f"--data text: {path} is not text (it holds NUL bytes)")
        parts.append(raw)
    return b"\n".join(parts)


def split_windows(n: int, block: int, seed: int, val_fraction: float = VAL_FRACTION) -> tuple[Tensor, Tensor]:
    """Window starts ``(train, val)`` for a corpus of ``n`` bytes.

    Windows do not overlap (each byte is a target once per epoch). Training windows start at a
    seed-chosen offset in ``[0, block)``, so different seeds cut the text differently; validation
    windows always start at the boundary, so a validation loss means the same thing for every seed.

    Raises:
        DataError: too little text for one window on each side of the boundary.
    """
    boundary = int(n * (1.0 - val_fraction))
    span = block + 1  # a window reads block inputs plus one more target
    if n - boundary < span or boundary < span + block:  # one window each side, whatever the offset
        raise DataError(
            f"--data text: {n} bytes of text are too few for {block}-token windows in both splits "
            f"(need at least {math.ceil(span / val_fraction) + 1})"
        )
    offset = int(torch.randint(0, block, (1,), generator=torch.Generator().manual_seed(seed)))
    train = torch.arange(offset, boundary - span + 1, block, dtype=torch.long)
    val = torch.arange(boundary, n - span + 1, block, dtype=torch.long)
    return train, val


@register_dataset("text")
def text(data_dir: Path | None = None, seed: int = 0, block: int = DEFAULT_BLOCK) -> DatasetBundle:
    """Byte-level next-token windows of the built-in corpus, or of the ``*.txt`` files in ``data_dir``.

    Args:
        data_dir: a directory of UTF-8 ``*.txt`` files (None: CPython's help texts).
        seed: picks where the training windows start.
        block: tokens per sample.

    Raises:
        DataError: no usable text (see :func:`read_text_dir`) or too little of it.
    """
    if block <= 0:
        raise DataError(f"--data text: the window length must be a positive number of tokens, got {block}")
    corpus = builtin_corpus() if data_dir is None else read_text_dir(data_dir)
    data = torch.frombuffer(bytearray(corpus), dtype=torch.uint8)
    train, val = split_windows(data.numel(), block, seed)
    return DatasetBundle(
        "text",
        ByteWindows(data, train, block),
        ByteWindows(data, val, block),
        num_classes=VOCAB_SIZE,
        in_channels=1,  # one token per position; image models are not meant for this dataset
        image_size=(1, block),  # a sample seen as a 1 x L row, so image-geometry callers get sane numbers
        sequence_length=block,
    )
