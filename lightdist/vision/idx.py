"""MNIST and Fashion-MNIST from their canonical IDX files (downloaded by torchvision.datasets).

A folder holds the four release files, gzipped as they ship (`fashion-mnist/*.gz`) or unpacked
as torchvision's own download leaves them (`FashionMNIST/raw/`). Both are read in memory, a split's
two files only, and nothing is written beside the release files (a data root may be shared or
read-only).
"""

import gzip
import struct
from pathlib import Path

import numpy as np
from torchvision import datasets

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


def _file(folder: Path, name: str) -> Path:
    """The release file `name` (gzipped) in folder, or its unpacked twin."""
    return folder / name if (folder / name).is_file() else folder / name.removesuffix(".gz")


def read_split(folder: Path, prefix: str, kind: type = MNISTFiles) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 1 x 28 x 28 uint8, labels N int64) for prefix 'train' or 't10k'.

    Reads only the split's two files (`kind` names the dataset; the format is the same for both).
    """
    images = read_idx(_file(folder, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(_file(folder, f"{prefix}-labels-idx1-ubyte.gz"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{folder}: {prefix} images {images.shape} and labels {labels.shape} do not match",
                        hint="delete the folder and download again")
    return images[:, None, :, :], labels.astype(np.int64)


# IDX element types (the third byte of the magic number) as big-endian numpy dtypes.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (gzipped or not) as an array.

    Parsed in memory: torchvision's reader (read_sn3_pascalvincent_tensor) takes only a path, so a
    gzipped file would be unpacked to disk and read back, twice the I/O of the 47 MB training images.
    """
    path = Path(path)
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES:
            raise ValueError("no IDX header")
        ndim = raw[3]
        shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        dtype = np.dtype(_IDX_TYPES[raw[2]])
        count = int(np.prod(shape))
        data = np.frombuffer(raw, dtype=dtype, count=count, offset=4 + 4 * ndim)
        if len(raw) != 4 + 4 * ndim + count * dtype.itemsize:
            raise ValueError("size does not match the header")
    except (OSError, EOFError, ValueError, struct.error) as exc:
        raise DataError(f"{path} is truncated or not an IDX file ({exc})",
                        hint="delete it and download again") from exc
    return data.astype(dtype.newbyteorder("="), copy=False).reshape(shape)


def download(folder: Path, kind: type) -> None:
    """torchvision's download (mirrors, md5 of each .gz, unpacked beside them) into folder."""
    kind(folder, train=True, download=True)
