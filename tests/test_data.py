"""Datasets: CIFAR python release, ImageFolder, transforms, archive helpers."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hwsbs.data import build_dataset, ensure_cifar10_jpeg, extract_cifar10_subset, make_loader
from hwsbs.data.cifar import CIFAR10, CifarDataset
from hwsbs.data.imagefolder import ImageFolderDataset
from hwsbs.data.safe_pickle import load_plain_pickle
from hwsbs.data.transforms import (
    Normalize,
    PadRandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    large_image_transform,
    small_image_transform,
)
from hwsbs.errors import DataError

ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-jpeg.tar.gz"


# --------------------------------------------------------------------------- CIFAR fixtures


def _dump_like_release(obj: object, path: Path) -> None:
    """Pickle the way the real files read: numpy's _reconstruct named from numpy.core.

    Protocol 3 writes globals as text lines (so the module can be renamed in place) and bytes
    without ``_codecs``, like the Python 2 originals.
    """
    raw = pickle.dumps(obj, protocol=3).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(raw)


def _batch(n: int, label_key: bytes, num_classes: int, offset: int) -> dict[bytes, object]:
    data = ((np.arange(n * 3072) + offset) % 251).astype(np.uint8).reshape(n, 3072)
    return {
        b"batch_label": b"synthetic",
        label_key: [(i + offset) % num_classes for i in range(n)],
        b"data": data,
        b"filenames": [f"img_{offset}_{i}.png".encode() for i in range(n)],
    }


def _write_cifar10(root: Path, per_batch: int = 4) -> Path:
    rel = root / "cifar-10-batches-py"
    rel.mkdir(parents=True)
    for i in range(1, 6):
        _dump_like_release(_batch(per_batch, b"labels", 10, i), rel / f"data_batch_{i}")
    _dump_like_release(_batch(3, b"labels", 10, 99), rel / "test_batch")
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump_like_release({b"label_names": names, b"num_cases_per_batch": per_batch}, rel / "batches.meta")
    return rel


def _write_cifar100(root: Path) -> Path:
    rel = root / "cifar-100-python"
    rel.mkdir(parents=True)
    for name, n in (("train", 6), ("test", 2)):
        batch = _batch(n, b"fine_labels", 100, 7)
        batch[b"coarse_labels"] = [0] * n
        _dump_like_release(batch, rel / name)
    _dump_like_release({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, rel / "meta")
    return rel


def test_release_pickles_use_numpy_core_names(tmp_path: Path) -> None:
    rel = _write_cifar10(tmp_path)
    assert b"numpy.core.multiarray\n_reconstruct" in (rel / "data_batch_1").read_bytes()
    assert load_plain_pickle(rel / "data_batch_1")[b"data"].shape == (4, 3072)


def test_cifar10_from_release_dir_and_parent(tmp_path: Path) -> None:
    rel = _write_cifar10(tmp_path)
    for where in (rel, tmp_path):
        bundle = build_dataset("cifar10", where, seed=0)
        assert (len(bundle.train), len(bundle.val)) == (20, 3)
        assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 3, (32, 32))
        assert bundle.classes is not None and bundle.classes[1] == "automobile"
    val = build_dataset("cifar10", rel, seed=0).val
    x, y = val[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 99 % 10
    # Evaluation only normalises: channel 0 pixel 0 of test image 0 is 99 % 251.
    assert x[0, 0, 0].item() == pytest.approx((99 / 255 - CIFAR10.mean[0]) / CIFAR10.std[0], abs=1e-5)


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    _write_cifar100(tmp_path)
    bundle = build_dataset("cifar100", tmp_path, seed=0)
    assert (len(bundle.train), len(bundle.val), bundle.num_classes) == (6, 2, 100)
    assert [bundle.train[i][1] for i in range(3)] == [7, 8, 9]
    assert bundle.classes is not None and bundle.classes[5] == "c5"


def test_cifar_subset_is_deterministic(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    a = build_dataset("cifar10", tmp_path, subset=8, seed=3)
    b = build_dataset("cifar10", tmp_path, subset=8, seed=3)
    assert len(a.train) == 8 and len(a.val) == 2
    assert a.train.indices == b.train.indices  # type: ignore[attr-defined]


def test_cifar_missing_batch_names_it(tmp_path: Path) -> None:
    rel = _write_cifar10(tmp_path)
    (rel / "data_batch_3").unlink()
    with pytest.raises(DataError) as err:
        build_dataset("cifar10", tmp_path)
    msg = str(err.value)
    assert "cifar-10-batches-py" in msg and "missing data_batch_3" in msg and "\n" not in msg


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_missing_directory(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(name, tmp_path / "nowhere")
    with pytest.raises(DataError, match="--data-dir is required"):
        build_dataset(name, None)
    with pytest.raises(DataError, match="missing"):
        build_dataset(name, tmp_path)  # exists, but empty


def test_cifar_garbled_file(tmp_path: Path) -> None:
    rel = _write_cifar10(tmp_path)
    (rel / "data_batch_2").write_bytes(b"\x00garbage, not a pickle\n" * 10)
    with pytest.raises(DataError) as err:
        build_dataset("cifar10", rel)
    msg = str(err.value)
    assert "data_batch_2" in msg and "not a readable pickle" in msg and "\n" not in msg


def test_cifar_wrong_shape(tmp_path: Path) -> None:
    rel = _write_cifar10(tmp_path)
    batch = _batch(4, b"labels", 10, 1)
    batch[b"data"] = np.zeros((4, 100), np.uint8)
    _dump_like_release(batch, rel / "test_batch")
    with pytest.raises(DataError, match=r"test_batch: expected a CIFAR-10 batch dict.*\(4, 100\)"):
        build_dataset("cifar10", rel)


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.target), "w")


def test_unpickler_refuses_code(tmp_path: Path) -> None:
    rel = _write_cifar10(tmp_path)
    victim = tmp_path / "pwned"
    (rel / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(victim)}, protocol=3))
    with pytest.raises(DataError, match=r"refusing to unpickle global (builtins|io)\.open"):
        build_dataset("cifar10", rel)
    assert not victim.exists()


def test_image_size_option_rejected_for_fixed_size(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    with pytest.raises(DataError, match="does not support --image-size"):
        build_dataset("cifar10", tmp_path, image_size=64)
    assert len(build_dataset("digits", augment=False).train) > 0  # no augmentation: a no-op


# --------------------------------------------------------------------------- ImageFolder


def _write_png(path: Path, size: tuple[int, int], value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value, np.uint8)
    arr[0, 0] = (255, 0, 0)
    Image.fromarray(arr).save(path)


def _write_folder(root: Path, val_name: str = "val", size: tuple[int, int] = (12, 12)) -> Path:
    for split, n in (("train", 3), (val_name, 2)):
        for c, cls in enumerate(["zebra", "ant"]):
            for i in range(n):
                _write_png(root / split / cls / f"{i:03d}.png", size, 40 * c + i)
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_small_images(tmp_path: Path) -> None:
    bundle = build_dataset("imagefolder", _write_folder(tmp_path), seed=0)
    assert bundle.classes == ["ant", "zebra"] and bundle.num_classes == 2
    assert (len(bundle.train), len(bundle.val), bundle.image_size) == (6, 4, (12, 12))
    x, y = bundle.val[0]
    assert x.shape == (3, 12, 12) and y == 0
    assert [bundle.train[i][1] for i in range(6)] == [0, 0, 0, 1, 1, 1]


def test_imagefolder_test_dir_and_large_size(tmp_path: Path) -> None:
    root = _write_folder(tmp_path, val_name="test", size=(80, 60))
    bundle = build_dataset("imagefolder", root, seed=0)
    assert bundle.image_size == (224, 224)
    assert bundle.train[0][0].shape == (3, 224, 224) and bundle.val[0][0].shape == (3, 224, 224)
    small = build_dataset("imagefolder", root, seed=0, image_size=32)
    assert small.train[0][0].shape == (3, 32, 32)


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing train/"):
        build_dataset("imagefolder", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        build_dataset("imagefolder", tmp_path / "nope")
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=r"missing val/ \(or test/\)"):
        build_dataset("imagefolder", tmp_path)
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match="class folder holds no images"):
        build_dataset("imagefolder", tmp_path)


def test_imagefolder_unknown_val_class_and_bad_image(tmp_path: Path) -> None:
    root = _write_folder(tmp_path)
    _write_png(root / "val" / "yak" / "0.png", (12, 12), 0)
    with pytest.raises(DataError, match="class folder 'yak' does not exist in the training split"):
        build_dataset("imagefolder", root)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    ds = ImageFolderDataset([(bad, 0)], transform=None)
    with pytest.raises(DataError, match="bad.png: cannot decode image"):
        ds[0]


# --------------------------------------------------------------------------- transforms


def test_crop_flip_shapes_and_flip() -> None:
    x = torch.arange(3 * 32 * 32, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    assert PadRandomCrop(32, 4)(x, gen).shape == (3, 32, 32)
    assert torch.equal(RandomHorizontalFlip(p=1.0)(x, gen), x.flip(-1))
    assert torch.equal(RandomHorizontalFlip(p=0.0)(x, gen), x)
    crops = {tuple(PadRandomCrop(32, 4)(x, gen)[0, 0, :3].tolist()) for _ in range(30)}
    assert len(crops) > 1  # the offset really varies
    img = Image.new("RGB", (50, 40))
    assert RandomResizedCrop(24)(img, gen).size == (24, 24)
    assert large_image_transform(24, False, (0.5,) * 3, (0.5,) * 3)(img, gen).shape == (3, 24, 24)


def test_normalize_values() -> None:
    x = torch.full((3, 2, 2), 255, dtype=torch.uint8)
    out = Normalize((0.5, 0.5, 0.5), (0.25, 0.5, 1.0))(x)
    assert out[:, 0, 0].tolist() == pytest.approx([2.0, 1.0, 0.5])


def test_transforms_deterministic_from_seed() -> None:
    x = torch.randint(0, 256, (3, 32, 32), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    tf = small_image_transform(32, True, (0.5,) * 3, (0.25,) * 3)

    def run(seed: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return [tf(x, gen) for _ in range(8)]

    assert all(torch.equal(a, b) for a, b in zip(run(5), run(5)))
    assert not all(torch.equal(a, b) for a, b in zip(run(5), run(6)))


def test_dataset_augmentation_reproducible(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    a = build_dataset("cifar10", tmp_path, seed=11).train
    b = build_dataset("cifar10", tmp_path, seed=11).train
    c = build_dataset("cifar10", tmp_path, seed=12).train
    xa, xb, xc = ([d[i][0] for i in range(20)] for d in (a, b, c))
    assert all(torch.equal(p, q) for p, q in zip(xa, xb))
    assert not all(torch.equal(p, q) for p, q in zip(xa, xc))


def test_loader_workers_reproducible_and_independent() -> None:
    # 40 copies of one image: any difference between samples comes from augmentation alone.
    image = torch.randint(0, 256, (1, 3, 32, 32), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    tf = small_image_transform(32, True, (0.5,) * 3, (0.25,) * 3)

    def epochs(workers: int) -> list[list[torch.Tensor]]:
        # A fresh dataset per run: in the main process its stream continues across loaders.
        train = CifarDataset(image.repeat(40, 1, 1, 1), torch.zeros(40, dtype=torch.long), tf, seed=4)
        loader = make_loader(train, batch_size=20, shuffle=False, seed=4, workers=workers)
        return [[x for x, _ in loader] for _ in range(2)]

    for workers in (0, 2):
        first, again = epochs(workers), epochs(workers)
        assert all(torch.equal(p, q) for p, q in zip(first[0] + first[1], again[0] + again[1]))
        assert not torch.equal(first[0][0], first[1][0])  # a second epoch draws fresh augmentation
    # Batch 0 comes from worker 0 and batch 1 from worker 1: their streams must differ.
    assert not torch.equal(epochs(2)[0][0], epochs(2)[0][1])
    with pytest.raises(DataError, match="--workers"):
        make_loader(CifarDataset(image, torch.zeros(1), None), batch_size=4, shuffle=False, seed=0, workers=-1)


# --------------------------------------------------------------------------- archive helpers


def _write_fake_archive(path: Path) -> Path:
    """A tiny tar.gz in the shared archive's layout, members deliberately out of order."""
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    names = [
        f"{split}/{cls}/{i:04d}.jpg" for split in ("train", "test") for cls in ("cat", "dog") for i in (3, 0, 2, 1)
    ]
    names += ["../escape.jpg", "/abs/x.jpg", "train/cat/../../up.jpg", "README"]
    with tarfile.open(path, "w:gz") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = len(jpeg)
            tar.addfile(info, io.BytesIO(jpeg))
    return path


def test_extract_subset_picks_smallest_names(tmp_path: Path) -> None:
    archive = _write_fake_archive(tmp_path / "fake.tar.gz")
    dest = extract_cifar10_subset(archive, tmp_path / "sub", per_class_train=2, per_class_test=1)
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert got == ["test/cat/0000.jpg", "test/dog/0000.jpg"] + [
        f"train/{c}/{i:04d}.jpg" for c in ("cat", "dog") for i in (0, 1)
    ]
    assert not (tmp_path / "escape.jpg").exists() and not (tmp_path / "up.jpg").exists()
    bundle = build_dataset("imagefolder", dest)
    assert (len(bundle.train), len(bundle.val), bundle.classes) == (4, 2, ["cat", "dog"])


def test_ensure_unpacks_once(tmp_path: Path) -> None:
    archive = _write_fake_archive(tmp_path / "fake.tar.gz")
    cache = ensure_cifar10_jpeg(archive, tmp_path / "cache")
    assert len(list((cache / "train").rglob("*.jpg"))) == 8
    (cache / "train" / "cat" / "0000.jpg").unlink()  # a complete cache is trusted, not re-extracted
    assert ensure_cifar10_jpeg(archive, tmp_path / "cache") == cache
    assert not (cache / "train" / "cat" / "0000.jpg").exists()
    with pytest.raises(DataError, match="archive not found"):
        ensure_cifar10_jpeg(tmp_path / "missing.tar.gz", tmp_path / "cache2")
    (tmp_path / "junk.tar.gz").write_bytes(b"junk" * 100)
    with pytest.raises(DataError, match="not a readable tar archive"):
        extract_cifar10_subset(tmp_path / "junk.tar.gz", tmp_path / "x", 1, 1)


@pytest.mark.slow
def test_cifar10_jpeg_archive_subset(tmp_path: Path) -> None:
    if not ARCHIVE.is_file():
        pytest.skip(f"shared CIFAR-10 JPEG archive not found at {ARCHIVE}")
    root = extract_cifar10_subset(ARCHIVE, tmp_path / "c10", per_class_train=26, per_class_test=4)
    bundle = build_dataset("imagefolder", root, subset=256, seed=0)
    assert bundle.classes is not None and len(bundle.classes) == 10 and bundle.classes[0] == "airplane"
    assert (len(bundle.train), len(bundle.val), bundle.image_size) == (256, 40, (32, 32))
    seen = 0
    for x, y in make_loader(bundle.train, batch_size=64, shuffle=True, seed=0):
        assert x.shape[1:] == (3, 32, 32) and torch.isfinite(x).all()
        assert 0 <= int(y.min()) and int(y.max()) < 10
        seen += x.shape[0]
    assert seen == 256
