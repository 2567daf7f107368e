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
    """The canonical cifar-10-batches-py layout: 5 train batches, a test batch, batches.meta (str keys and
    names, as the Python 2 pickles of the release load with encoding="latin1")."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"batch_label": name, "labels": [int(v) for v in rng.integers(0, 10, per_batch)],
                 "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "filenames": [f"{i}.png" for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)
    return folder


def write_cifar100(root: Path, n_train: int = 300, n_test: int = 100, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "fine_labels": [i % 100 for i in range(n)], "coarse_labels": [i % 20 for i in range(n)]}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)],
                     "coarse_label_names": [f"super{i}" for i in range(20)]}, f)
    return folder


def write_class_folders(folder: Path, colours: dict[str, tuple[int, int, int]], per_class: int, size: int = 12,
                        noise: float = 20.0, seed: int = 0) -> Path:
    """folder/<class>/<i>.png, the layout of data=image_folder: each class a flat colour under Gaussian
    noise, so that a small CNN tells them apart in a few steps."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, colour in colours.items():
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.broadcast_to(np.asarray(colour, np.float64), (size, size, 3))
            if noise:
                pixels = pixels + rng.normal(0, noise, (size, size, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / name / f"{i}.png")
    return folder
