"""Unpickling of plain data files (the CIFAR python release) that refuses to run code.

``pickle.load`` on an arbitrary file can call any importable function. The CIFAR batches are
dicts of bytes, lists and numpy arrays, so the only globals they legitimately reference are
numpy's array-reconstruction helpers; everything else is refused.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from hardware_profiles.checked_io import DATA_LIMIT, open_checked
from hwsbs.errors import DataError

__all__ = ["load_plain_pickle"]

# numpy's private ``_reconstruct`` lives in numpy.core (numpy 1.x, and the name in files written
# by it) or numpy._core (numpy 2.x); take the function object from ndarray.__reduce__ so that
# neither deprecated module has to be imported.
_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only numpy's array-reconstruction globals."""

    def __init__(self, file: Any, source: Path) -> None:
        super().__init__(file, encoding="bytes")  # the CIFAR files were written by Python 2
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._source}: refusing to unpickle global {module}.{name}; "
                "expected a plain data pickle (dicts, lists, bytes and numpy arrays only)"
            ) from None


def load_plain_pickle(path: str | Path) -> Any:
    """Load a pickle that may only contain plain data and numpy arrays.

    Args:
        path: the pickle file.

    Returns:
        The unpickled object (strings written by Python 2 come back as ``bytes``).

    Raises:
        DataError: the file is missing, unreadable, not a regular file (a FIFO, a device) or
            larger than ``DATA_LIMIT``, is not a pickle, or references any global other than
            numpy's array reconstruction.
    """
    path = Path(path)
    try:
        with open_checked(path, "file", DATA_LIMIT, DataError) as fh:
            return _RestrictedUnpickler(fh, path).load()
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # pickle raises many types on garbage (UnpicklingError, EOFError, ...)
        detail = " ".join(str(exc).split())  # keep the message on one line
        raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {detail})") from None
