"""CIFAR-10 and CIFAR-100 in their canonical python-pickle layouts.

cifar-10-batches-py/: data_batch_1..5, test_batch, batches.meta
cifar-100-python/:    train, test, meta
Each batch is a pickled dict with b"data" (N x 3072 uint8, channel-major rows) and
b"labels" (CIFAR-10) or b"fine_labels" (CIFAR-100).
"""

import pickle
import tarfile
from pathlib import Path

import numpy as np

from lightdist.errors import DataError

CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
CIFAR100_FILES = ("train", "test", "meta")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{path} is not a CIFAR python batch ({exc})", hint="delete it and download again") from exc


def _images_labels(batch: dict, label_key: bytes, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if b"data" not in batch or label_key not in batch:
        raise DataError(f"{path} lacks {label_key!r} or b'data'", hint="delete it and download again")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: data has shape {data.shape}, expected N x 3072", hint="delete it and download again")
    return data.reshape(-1, 3, 32, 32), np.asarray(batch[label_key], dtype=np.int64)


def read_cifar10(folder: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    parts = [_images_labels(_unpickle(folder / n), b"labels", folder / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def read_cifar100(folder: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    path = folder / ("train" if train else "test")
    return _images_labels(_unpickle(path), b"fine_labels", path)


def cifar10_classes(folder: Path) -> list[str]:
    return [n.decode() for n in _unpickle(folder / "batches.meta")[b"label_names"]]


def cifar100_classes(folder: Path) -> list[str]:
    return [n.decode() for n in _unpickle(folder / "meta")[b"fine_label_names"]]


def extract_archive(folder: Path) -> None:
    """The download is a .tar.gz holding the folder itself; unpack it beside the folder."""
    for archive in folder.glob("*.tar.gz"):
        with tarfile.open(archive) as tar:
            tar.extractall(folder.parent, filter="data")
        archive.unlink()
