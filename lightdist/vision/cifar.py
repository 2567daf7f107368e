"""CIFAR-10 and CIFAR-100 in their canonical python-pickle layouts, read and downloaded by torchvision.datasets.

cifar-10-batches-py/: data_batch_1..5, test_batch, batches.meta
cifar-100-python/:    train, test, meta
"""

import pickle
from pathlib import Path

import numpy as np
from torchvision import datasets

from lightdist.errors import DataError

CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
CIFAR100_FILES = ("train", "test", "meta")


class _InFolder:
    """A torchvision CIFAR dataset reading `folder` under any name (torchvision: root/<base_folder>), and
    checking that the files exist rather than their md5: the md5 of the downloaded archive is checked,
    while the per-file sums would refuse any other copy in the same layout (a subset, a test's)."""

    def __init__(self, folder: Path, train: bool, download: bool = False):
        self.base_folder = folder.name
        super().__init__(folder.parent, train=train, download=download)


class CIFAR10Files(_InFolder, datasets.CIFAR10):
    train_list = [[name, None] for name in CIFAR10_FILES[:5]]
    test_list = [["test_batch", None]]
    meta = {**datasets.CIFAR10.meta, "md5": None}


class CIFAR100Files(_InFolder, datasets.CIFAR100):
    train_list = [["train", None]]
    test_list = [["test", None]]
    meta = {**datasets.CIFAR100.meta, "md5": None}


def load(kind: type, folder: Path, train: bool) -> datasets.CIFAR10:
    try:
        return kind(folder, train=train)
    except (pickle.UnpicklingError, KeyError, EOFError, ValueError, OSError, RuntimeError) as exc:
        # torchvision names no file; every file of the split is checked again to name the bad one
        names = [n for n, _ in (kind.train_list if train else kind.test_list)] + [kind.meta["filename"]]
        bad = next((folder / n for n in names if not _readable(folder / n)), folder)
        raise DataError(f"{bad} is not a CIFAR python batch ({exc!r})", hint="delete it and download again") from exc


def _readable(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            pickle.load(f, encoding="latin1")
        return True
    except Exception:  # noqa: BLE001 - any failure means this file is the bad one
        return False


def read(kind: type, folder: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 3 x 32 x 32 uint8, labels N int64)."""
    data = load(kind, folder, train)
    images = np.asarray(data.data, dtype=np.uint8)  # torchvision keeps them N x H x W x C
    return images.transpose(0, 3, 1, 2), np.asarray(data.targets, dtype=np.int64)


def classes(kind: type, folder: Path) -> list[str]:
    """The class names from the meta file alone (torchvision reads them only together with a whole split)."""
    path = folder / kind.meta["filename"]
    try:
        with open(path, "rb") as f:
            return [str(n) for n in pickle.load(f, encoding="latin1")[kind.meta["key"]]]
    except (pickle.UnpicklingError, KeyError, EOFError, ValueError, OSError, TypeError) as exc:
        raise DataError(f"{path} is not a CIFAR meta file ({exc!r})", hint="delete it and download again") from exc


def download(folder: Path, kind: type) -> None:
    """torchvision's download (the archive's md5 checked), unpacked into folder's parent as folder's name."""
    kind(folder, train=False, download=True)
