"""Small image datasets that tests write in the exact on-disk layouts the loaders read."""

import pickle
from pathlib import Path

import numpy as np

from lightdist.vision.idx import write_idx


def write_fashion_mnist(root: Path, n_train: int = 8000, n_test: int = 1000, seed: int = 0) -> Path:
    """root/fashion-mnist/ with the four canonical IDX .gz files, classes a model can learn.

    Each class is a fixed blocky pattern (7x7 cells of 4x4 pixels) at a random brightness under
    strong noise: a small CNN separates them within an epoch, yet no single pixel gives the class
    away. The noise sits on a grey background, clipped rarely: gzip stores noise fast but spends
    seconds searching long runs of zeros. 8,000 training images leave room for the default 5,000
    validation images plus the training subsets the tests ask for.
    """
    rng = np.random.default_rng(seed)
    cells = (rng.random((10, 7, 7)) < 0.4) * rng.uniform(80, 130, (10, 7, 7))
    patterns = cells.repeat(4, axis=1).repeat(4, axis=2)
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.permutation(np.arange(n) % 10)
        brightness = rng.uniform(0.5, 1.0, (n, 1, 1))
        images = 60 + patterns[labels] * brightness + rng.normal(0, 30, (n, 28, 28))
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", np.clip(images, 0, 255).astype(np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return folder


def write_mnist(root: Path, n_train: int = 300, n_test: int = 100, seed: int = 0) -> Path:
    """The canonical MNIST IDX gz files (random pixels) under root/mnist/."""
    rng = np.random.default_rng(seed)
    folder = root / "mnist"
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


def write_cifar10(root: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """The canonical cifar-10-batches-py layout: 5 train batches, a test batch, batches.meta."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": list(rng.integers(0, 10, per_batch)),
                 b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"filenames": [f"{i}.png".encode() for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072}, f, protocol=2)
    return folder


def write_cifar100(root: Path, n_train: int = 300, n_test: int = 100, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": list(np.arange(n) % 100), b"coarse_labels": list(np.arange(n) % 20)}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"class{i}".encode() for i in range(100)],
                     b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}, f)
    return folder
