"""The shared CIFAR-10 JPEG archive (``train/<class>/NNNN.jpg``, ``test/<class>/NNNN.jpg`` in a
``.tar.gz``) turned into ImageFolder directories for ``--data imagefolder``.

Members are streamed with :mod:`tarfile` and written one by one; only regular files whose names
match that layout are written, so a hostile archive cannot place files outside the destination.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from hwsbs.errors import DataError

__all__ = ["DEFAULT_CACHE_DIR", "find_cifar10_archive", "extract_cifar10_subset", "ensure_cifar10_jpeg"]

#: Where :func:`ensure_cifar10_jpeg` unpacks the archive unless told otherwise.
DEFAULT_CACHE_DIR = Path("~/.cache/hwsbs/cifar10-jpeg")
#: Environment variable naming the archive, checked before the checkout-relative location.
ARCHIVE_ENV = "HWSBS_CIFAR10_ARCHIVE"
_MEMBER = re.compile(r"^(train|test)/([A-Za-z0-9_-]+)/([A-Za-z0-9_-]+\.(?:jpe?g|png))$")
_MARKER = ".complete"  # holds the archive's sha256 once an unpack has finished


def find_cifar10_archive() -> Path | None:
    """The archive named by ``$HWSBS_CIFAR10_ARCHIVE``, else ``shared/data/cifar10-jpeg.tar.gz``
    beside the hwsbs checkout; None when neither exists."""
    env = os.environ.get(ARCHIVE_ENV)
    candidates = [Path(env).expanduser()] if env else []
    # this file is <checkout>/hwsbs/data/archive.py; shared/ sits beside <checkout>
    candidates.append(Path(__file__).resolve().parents[3] / "shared/data/cifar10-jpeg.tar.gz")
    return next((c for c in candidates if c.is_file()), None)


def _iter_images(archive: Path) -> Iterator[tuple[str, str, str, tarfile.TarFile, tarfile.TarInfo]]:
    """Stream ``(split, class, file name, tar, member)`` for every image member in layout."""
    if not archive.is_file():
        raise DataError(
            f"{archive}: CIFAR-10 JPEG archive not found (expected a .tar.gz of train/<class>/*.jpg, test/<class>/*.jpg)"
        )
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                name = member.name[2:] if member.name.startswith("./") else member.name
                match = _MEMBER.match(name)
                if member.isfile() and match:
                    yield match.group(1), match.group(2), match.group(3), tar, member
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        detail = " ".join(str(exc).split())
        raise DataError(f"{archive}: not a readable tar archive ({type(exc).__name__}: {detail})") from None


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    fh = tar.extractfile(member)
    if fh is None:  # pragma: no cover - isfile() members always have data
        raise DataError(f"{member.name}: cannot read archive member")
    return fh.read()


def extract_cifar10_subset(archive: str | Path, dest: str | Path, per_class_train: int, per_class_test: int) -> Path:
    """Write a small ImageFolder (``dest/train/<class>/``, ``dest/test/<class>/``) from the archive.

    The archive is read once as a stream, never unpacked as a whole. Per class the files with the
    smallest names are kept, so the subset depends only on the archive's contents, not on the
    order of its members.

    Args:
        archive: the ``.tar.gz``.
        dest: output directory (created; existing files of the same names are overwritten).
        per_class_train: images per class under ``train/``.
        per_class_test: images per class under ``test/``.

    Returns:
        ``dest``, ready for ``build_dataset("imagefolder", dest)``.

    Raises:
        DataError: a missing or unreadable archive, a negative count, or no member in the layout.
    """
    if per_class_train < 0 or per_class_test < 0:
        raise DataError(f"per-class counts must be >= 0, got train={per_class_train} test={per_class_test}")
    archive, dest = Path(archive), Path(dest)
    limit = {"train": per_class_train, "test": per_class_test}
    kept: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    seen = 0
    for split, cls, fname, tar, member in _iter_images(archive):
        seen += 1
        best = kept.setdefault((split, cls), [])
        if len(best) < limit[split] or (best and fname < best[-1][0]):
            bisect.insort(best, (fname, _read(tar, member)))
            del best[limit[split] :]
    if seen == 0:
        raise DataError(f"{archive}: no member matches train/<class>/<file>.jpg or test/<class>/<file>.jpg")
    for (split, cls), files in kept.items():
        folder = dest / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        for fname, data in files:
            (folder / fname).write_bytes(data)
    return dest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_complete(folder: Path, digest: str) -> bool:
    marker = folder / _MARKER
    return marker.is_file() and marker.read_text().strip() == digest


def ensure_cifar10_jpeg(archive: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """Unpack the whole archive into ``cache_dir`` once and return that ImageFolder root.

    A marker file records the archive's sha256 after a complete unpack; later calls with the
    same archive return at once. The unpack goes to a temporary sibling directory that is renamed
    into place, so an interrupted or concurrent run never leaves a half-filled cache behind.

    Args:
        archive: the ``.tar.gz``; None uses :func:`find_cifar10_archive`.
        cache_dir: the destination; None uses ``~/.cache/hwsbs/cifar10-jpeg``.

    Returns:
        The directory holding ``train/`` and ``test/``.

    Raises:
        DataError: no archive found, or an unreadable one.
    """
    if archive is None:
        archive = find_cifar10_archive()
        if archive is None:
            raise DataError(
                f"CIFAR-10 JPEG archive not found: set ${ARCHIVE_ENV} or place it at shared/data/cifar10-jpeg.tar.gz beside the checkout"
            )
    archive = Path(archive)
    cache = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
    if not archive.is_file():
        raise DataError(f"{archive}: CIFAR-10 JPEG archive not found")
    digest = _sha256(archive)
    if _is_complete(cache, digest):
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.parent / f".{cache.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        made: set[Path] = set()
        for split, cls, fname, tar, member in _iter_images(archive):
            folder = partial / split / cls
            if folder not in made:
                folder.mkdir(parents=True, exist_ok=True)
                made.add(folder)
            (folder / fname).write_bytes(_read(tar, member))
        if not made:
            raise DataError(f"{archive}: no member matches train/<class>/<file>.jpg or test/<class>/<file>.jpg")
        (partial / _MARKER).write_text(digest + "\n")
        if _is_complete(cache, digest):  # a concurrent run finished first: keep its copy
            return cache
        if cache.exists():  # a stale or incomplete earlier unpack: move it aside, then drop it
            stale = cache.parent / f".{cache.name}.stale-{os.getpid()}"
            cache.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            partial.rename(cache)
        except OSError:
            if not _is_complete(cache, digest):  # another process did not finish it either
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return cache
