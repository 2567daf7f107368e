"""MNIST and Fashion-MNIST from their canonical IDX files, read and downloaded by torchvision.datasets.

A folder holds the four release files, gzipped as they ship (`fashion-mnist/*.gz`) or unpacked
as torchvision's own download leaves them (`FashionMNIST/raw/`). torchvision reads only unpacked
files; gzipped ones are unpacked into a temporary folder for the read, never beside the release
files, since a data root may be shared or read-only.
"""

import gzip
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets
from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor
from torchvision.datasets.utils import extract_archive

from lightdist.errors import DataError

IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write uint8 data as a gzipped IDX file (how own data, or a subset, becomes an MNIST-format folder)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


class _InFolder:
    """A torchvision MNIST-family dataset whose raw files sit directly in `folder` (torchvision
    looks in root/<ClassName>/raw; ours are in root/fashion-mnist, root/mnist or the folder itself)."""

    def __init__(self, folder: Path, train: bool, download: bool = False):
        self._folder = str(folder)
        super().__init__(self._folder, train=train, download=download)

    @property
    def raw_folder(self) -> str:
        return self._folder

    @property
    def processed_folder(self) -> str:
        return str(Path(self._folder) / "processed")


class MNISTFiles(_InFolder, datasets.MNIST):
    pass


class FashionMNISTFiles(_InFolder, datasets.FashionMNIST):
    pass


def present(folder: Path) -> bool:
    """Whether folder holds the four files, each gzipped or unpacked."""
    return all((folder / n).is_file() or (folder / n.removesuffix(".gz")).is_file() for n in IDX_FILES)


def _unpacked(folder: Path, tmp: Path) -> Path:
    """A folder with the four files unpacked: folder itself, or tmp holding the gzipped ones unpacked."""
    if all((folder / n.removesuffix(".gz")).is_file() for n in IDX_FILES):
        return folder
    for name in IDX_FILES:
        try:
            extract_archive(folder / name, tmp)
        except (OSError, EOFError) as exc:
            raise DataError(f"{folder / name} is not a readable gzip file ({exc})",
                            hint="delete it and download again") from exc
    return tmp


def read_split(folder: Path, prefix: str, kind: type = MNISTFiles) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 1 x 28 x 28 uint8, labels N int64) for prefix 'train' or 't10k'."""
    with tempfile.TemporaryDirectory(prefix="lightdist-idx-") as tmp:
        raw = _unpacked(folder, Path(tmp))
        try:
            data = kind(raw, train=prefix == "train")
        except (AssertionError, RuntimeError, ValueError, TypeError, OSError) as exc:
            # torchvision asserts on a size that does not match the header and fails reshaping labels
            raise DataError(f"{folder}: the {prefix} files are truncated or not MNIST-format IDX files "
                            f"({exc or 'size does not match the header'})",
                            hint="delete the folder and download again") from exc
    images, labels = data.data.numpy(), data.targets.numpy()
    if images.ndim != 3 or len(images) != len(labels):
        raise DataError(f"{folder}: {prefix} images {images.shape} and labels {labels.shape} do not match",
                        hint="delete the folder and download again")
    return images[:, None, :, :], labels.astype(np.int64)


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (gzipped or not) as an array, through torchvision's reader."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="lightdist-idx-") as tmp:
        try:
            unpacked = extract_archive(path, tmp) if path.suffix == ".gz" else path
            tensor: torch.Tensor = read_sn3_pascalvincent_tensor(str(unpacked), strict=True)
        except (AssertionError, RuntimeError, KeyError, OSError, EOFError) as exc:
            raise DataError(f"{path} is truncated or not an IDX file ({exc or 'size does not match the header'})",
                            hint="delete it and download again") from exc
    return tensor.numpy()


def download(folder: Path, kind: type) -> None:
    """torchvision's download (mirrors, md5 of each .gz, unpacked beside them) into folder."""
    kind(folder, train=True, download=True)
