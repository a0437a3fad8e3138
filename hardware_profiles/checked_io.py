"""Reading input files defensively (regular files only, with a size limit, one typed error), and
writing output files atomically.

Every file hwsbs reads (profiles, lookup tables, ``config.yaml``, ``options.json``, search
spaces, checkpoints, dataset pickles) goes through :func:`open_checked`, so that a path that is
a FIFO (which would block forever), a device such as ``/dev/zero`` (endless), a directory, or a
file too large to be what it claims fails with one line instead of hanging or exhausting memory.
Symlinks are followed; what they point to must be a regular file.

The files a run writes to read back itself (``options.json``, ``checkpoint.pt``) and exported
models go through :func:`write_atomic`: a sibling temporary file, flushed to disk and renamed over the
target, so a crash leaves the old file or the new one, never a torn one, and a failed write (a
full disk, a read-only directory) leaves no temporary file behind and names the target.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from hardware_profiles.errors import ConfigError, HwsbsError

__all__ = [
    "MIB",
    "TEXT_LIMIT",
    "CHECKPOINT_LIMIT",
    "DATA_LIMIT",
    "checked_file",
    "open_checked",
    "read_checked_bytes",
    "read_checked_text",
    "read_checked_json",
    "write_atomic",
    "write_text_atomic",
]

MIB = 1 << 20
#: Profiles, lookup tables, config.yaml, options.json, search spaces (the largest real ones are
#: well under 1 MiB).
TEXT_LIMIT = 64 * MIB
#: Model checkpoints and ``--checkpoint`` state_dicts (ResNet-50 in float32 is about 100 MiB).
CHECKPOINT_LIMIT = 8 * 1024 * MIB
#: One dataset file (a CIFAR batch is 30 MiB, CIFAR-100's training set 150 MiB).
DATA_LIMIT = 1024 * MIB

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _check_stat(st: os.stat_result, path: Path, label: str, what: str, limit: int, error: type[HwsbsError]) -> None:
    """Raise ``error`` unless ``st`` is a regular file of at most ``limit`` bytes."""
    if not stat.S_ISREG(st.st_mode):
        target = os.path.realpath(path)
        via = f" ({path} -> {target})" if target != str(path) and os.path.islink(path) else ""
        raise error(f"{label}: {what} is {_kind(st.st_mode)}, not a regular file{via}")
    if st.st_size > limit:
        raise error(f"{label}: {what} is too large ({st.st_size} bytes; at most {limit} are read)")


def checked_file(
    path: str | Path,
    what: str = "file",
    limit: int = TEXT_LIMIT,
    error: type[HwsbsError] = ConfigError,
    label: str | None = None,
) -> Path:
    """Check that ``path`` is (or links to) a regular file of at most ``limit`` bytes.

    Args:
        path: the file.
        what: how messages call it ("file", "lookup table file", ...).
        limit: the largest accepted size in bytes.
        error: the exception class raised.
        label: how messages name the file (default: the path).

    Returns:
        ``path`` as a :class:`Path`.

    Raises:
        HwsbsError: (``error``) ``LABEL: WHAT not found``, ``... is a FIFO ...``, ``... is too
            large ...`` or ``cannot read``.
    """
    p = Path(path)
    label = str(p) if label is None else label
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise error(f"{label}: {what} not found") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise error(f"{label}: cannot read {what}: {getattr(exc, 'strerror', None) or exc}") from None
    _check_stat(st, p, label, what, limit, error)
    return p


@contextmanager
def open_checked(
    path: str | Path,
    what: str = "file",
    limit: int = TEXT_LIMIT,
    error: type[HwsbsError] = ConfigError,
    label: str | None = None,
) -> Iterator[IO[bytes]]:
    """Open a checked regular file for binary reading (see :func:`checked_file`).

    The file is opened without blocking (a FIFO swapped in after the check cannot hang the
    open) and checked again through the open descriptor.
    """
    label = str(path) if label is None else label
    p = checked_file(path, what, limit, error, label)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        raise error(f"{label}: cannot read {what}: {exc.strerror or exc}") from None
    try:
        _check_stat(os.fstat(fd), p, label, what, limit, error)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh


def read_checked_bytes(
    path: str | Path,
    what: str = "file",
    limit: int = TEXT_LIMIT,
    error: type[HwsbsError] = ConfigError,
    label: str | None = None,
) -> bytes:
    """The contents of a checked regular file, never more than ``limit`` bytes.

    Raises:
        HwsbsError: (``error``) as :func:`checked_file`, or the file grew past ``limit``.
    """
    label = str(path) if label is None else label
    with open_checked(path, what, limit, error, label) as fh:
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise error(f"{label}: cannot read {what}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise error(f"{label}: {what} is too large (over {limit} bytes)")
    return data


def read_checked_text(
    path: str | Path,
    what: str = "file",
    limit: int = TEXT_LIMIT,
    error: type[HwsbsError] = ConfigError,
    label: str | None = None,
) -> str:
    """A checked regular file decoded as UTF-8.

    Raises:
        HwsbsError: (``error``) as :func:`read_checked_bytes`, or the file is not UTF-8.
    """
    label = str(path) if label is None else label
    data = read_checked_bytes(path, what, limit, error, label)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{label}: {what} is not UTF-8 text (byte {exc.start})") from None


def read_checked_json(
    path: str | Path,
    what: str = "file",
    limit: int = TEXT_LIMIT,
    error: type[HwsbsError] = ConfigError,
    label: str | None = None,
) -> Any:
    """A checked regular file parsed as JSON.

    Raises:
        HwsbsError: (``error``) as :func:`read_checked_text`, or invalid (or too deeply nested) JSON.
    """
    label = str(path) if label is None else label
    text = read_checked_text(path, what, limit, error, label)
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer with too many digits
        raise error(f"{label}: invalid JSON: {' '.join(str(exc).split())[:200]}") from None
    except RecursionError:
        raise error(f"{label}: invalid JSON: nested too deeply") from None


def write_atomic(
    path: str | Path,
    write: Callable[[IO[bytes]], Any],
    what: str = "file",
    error: type[HwsbsError] = ConfigError,
    label: str | None = None,
) -> Path:
    """Write ``path`` through ``write(fh)`` into a sibling temporary file, then rename it over ``path``.

    The temporary file is flushed and fsynced before the rename, so a crash or power loss leaves
    either the old file or the complete new one. Whatever goes wrong (``OSError`` such as a full
    disk, or an exception of ``write``), the temporary file is removed.

    Raises:
        HwsbsError: (``error``) ``LABEL: cannot write WHAT (REASON)`` for an ``OSError``; other
            exceptions of ``write`` pass through unchanged.
    """
    p = Path(path)
    label = str(p) if label is None else label
    tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
    try:
        try:
            with open(tmp, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, p)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as exc:
        raise error(f"{label}: cannot write {what} ({exc.strerror or exc})") from None
    return p


def write_text_atomic(
    path: str | Path, text: str, what: str = "file", error: type[HwsbsError] = ConfigError, label: str | None = None
) -> Path:
    """:func:`write_atomic` of UTF-8 text."""
    data = text.encode("utf-8")
    return write_atomic(path, lambda fh: fh.write(data), what, error, label)
