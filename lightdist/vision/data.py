"""Image classification data: MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100.

Images stay uint8 in memory and on the way to the device; conversion to float,
normalisation with the training split's own statistics and augmentation happen on the
device in on_after_batch_transfer.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import TensorDataset

from lightdist.data import download
from lightdist.data.base import ClassificationDataModule
from lightdist.data.splits import KFold, holdout_count, stratified_split, stratified_subset
from lightdist.errors import DataError
from lightdist.vision import cifar, idx
from lightdist.vision.augment import ImageAugmentation
from lightdist.vision.on_device import OnDevice


@dataclass(frozen=True)
class VisionDataset:
    title: str
    folders: tuple[str, ...]  # first one is where downloads go
    files: tuple[str, ...]  # named in the error when none of the folders holds them
    kind: type  # the torchvision.datasets class (lightdist.vision.idx / cifar) that reads and downloads
    read: Callable[[type, Path, bool], tuple[np.ndarray, np.ndarray]]
    present: Callable[[Path], bool]
    download: Callable[[Path, type], None]
    classes: tuple[str, ...] | Callable[[type, Path], list[str]]  # names, or read from the files
    in_channels: int
    image_size: int
    num_classes: int
    train_size: Callable[[Path], int]  # cheap: what data.val_size is checked against before a run


def _idx_read(kind: type, folder: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    return idx.read_split(folder, "train" if train else "t10k", kind)


def _idx_train_size(folder: Path) -> int:
    name = idx.IDX_FILES[1]
    return len(idx.read_idx(folder / name if (folder / name).is_file() else folder / name.removesuffix(".gz")))


def _cifar_present(files: tuple[str, ...]) -> Callable[[Path], bool]:
    return lambda folder: all((folder / name).is_file() for name in files)


DATASETS: dict[str, VisionDataset] = {
    "fashion_mnist": VisionDataset(
        title="Fashion-MNIST",
        folders=("fashion-mnist", "FashionMNIST/raw"),
        files=idx.IDX_FILES,
        kind=idx.FashionMNISTFiles,
        read=_idx_read, present=idx.present, download=idx.download,
        train_size=_idx_train_size,
        classes=tuple(idx.FashionMNISTFiles.classes),
        in_channels=1, image_size=28, num_classes=10,
    ),
    "mnist": VisionDataset(
        title="MNIST",
        folders=("mnist", "MNIST/raw"),
        files=idx.IDX_FILES,
        kind=idx.MNISTFiles,
        read=_idx_read, present=idx.present, download=idx.download,
        train_size=_idx_train_size,
        classes=tuple(str(d) for d in range(10)),
        in_channels=1, image_size=28, num_classes=10,
    ),
    "cifar10": VisionDataset(
        title="CIFAR-10",
        folders=("cifar-10-batches-py",),
        files=cifar.CIFAR10_FILES,
        kind=cifar.CIFAR10Files,
        read=cifar.read, present=_cifar_present(cifar.CIFAR10_FILES), download=cifar.download,
        train_size=lambda folder: 50000,  # five canonical batches of 10000
        classes=cifar.classes,
        in_channels=3, image_size=32, num_classes=10,
    ),
    "cifar100": VisionDataset(
        title="CIFAR-100",
        folders=("cifar-100-python",),
        files=cifar.CIFAR100_FILES,
        kind=cifar.CIFAR100Files,
        read=cifar.read, present=_cifar_present(cifar.CIFAR100_FILES), download=cifar.download,
        train_size=lambda folder: 50000,
        classes=cifar.classes,
        in_channels=3, image_size=32, num_classes=100,
    ),
}


def locate(spec: VisionDataset, root: str | Path, allow_download: bool) -> Path:
    """The dataset's folder under `root` (or `root` itself); else torchvision downloads it into the first."""
    return download.locate(root, spec.folders, spec.files, spec.title, allow_download,
                           fetch=lambda target: spec.download(target, spec.kind), present=spec.present)


def channel_stats(images: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 NCHW images in [0, 1] units, in chunks to bound memory."""
    total = np.zeros(images.shape[1])
    squares = np.zeros(images.shape[1])
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].astype(np.float64) / 255.0
        total += x.sum(axis=(0, 2, 3))
        squares += (x * x).sum(axis=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


class VisionDataModule(OnDevice, ClassificationDataModule):
    FACTS = ("num_classes", "in_channels", "image_size", "class_names")
    PREFLIGHT_FACTS = True
    def __init__(
        self,
        dataset: Literal["fashion_mnist", "mnist", "cifar10", "cifar100"],
        root: str,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int | float = 5000,
        split_seed: int = 0,
        kfold: KFold | None = None,
        train_subset: int | None = None,
        val_subset: int | None = None,
        test_subset: int | None = None,
        download: bool = True,
        augment: ImageAugmentation | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        on_device: bool = False,
    ):
        super().__init__(batch_size, eval_batch_size, shuffle, drop_last, num_workers, pin_memory,
                         persistent_workers)
        self.spec = DATASETS[dataset]
        # the splits live on the run's device as uint8 tensors (lightdist.vision.on_device)
        self.on_device = on_device
        self.root = root
        self.val_size = val_size
        self.split_seed = split_seed
        self.kfold = kfold if kfold is not None and kfold.enabled else None
        self.subsets = {"train": train_subset, "val": val_subset, "test": test_subset}
        self.download = download
        self.augment = augment if augment is not None and augment.enabled else None
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self._folder: Path | None = None

    def _locate(self, allow_download: bool) -> Path:
        if self._folder is None:
            self._folder = locate(self.spec, self.root, allow_download)
        return self._folder

    def facts(self) -> dict[str, Any]:
        s = self.spec
        return {
            "num_classes": s.num_classes,
            "in_channels": s.in_channels,
            "image_size": s.image_size,
            "class_names": list(s.classes) if isinstance(s.classes, tuple) else s.classes(
                s.kind, self._locate(self.download)),
        }

    def check_available(self) -> None:
        folder = self._locate(self.download)
        if not self.kfold:
            holdout_count(self.val_size, self.spec.train_size(folder), "data.val_size")

    def prepare_data(self) -> None:
        self._locate(self.download)  # Lightning calls this on one process per node: downloads happen once

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        folder = self._locate(allow_download=False)
        images, labels = self.spec.read(self.spec.kind, folder, True)
        test_images, test_labels = self.spec.read(self.spec.kind, folder, False)
        if labels.max() >= self.spec.num_classes or test_labels.max() >= self.spec.num_classes:
            raise DataError(f"{folder}: labels exceed the {self.spec.num_classes} classes of {self.spec.title}",
                            hint="check data.dataset matches the files")
        if self.kfold:
            train_idx, val_idx = self.kfold.split(labels, self.split_seed)
        else:
            train_idx, val_idx = stratified_split(labels, holdout_count(self.val_size, len(labels), "data.val_size"),
                                                  self.split_seed)
        train_idx = train_idx[stratified_subset(labels[train_idx], self.subsets["train"], self.split_seed)]
        val_idx = val_idx[stratified_subset(labels[val_idx], self.subsets["val"], self.split_seed)]
        test_idx = stratified_subset(test_labels, self.subsets["test"], self.split_seed)

        # Per-channel statistics of the training split itself (no hard-coded constants); a module
        # restored from a checkpoint (evaluation, prediction) keeps the run's own statistics.
        if self.mean is None:
            mean, std = channel_stats(images[train_idx])
            self.mean = torch.from_numpy(mean).view(1, -1, 1, 1)
            self.std = torch.from_numpy(std).view(1, -1, 1, 1).clamp_min(1e-6)

        def tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
            return TensorDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y))

        self.train_set = tensors(images[train_idx], labels[train_idx])
        self.val_set = tensors(images[val_idx], labels[val_idx])
        self.test_set = tensors(test_images[test_idx], test_labels[test_idx])
        if self.on_device:
            self.resident(f"the {self.spec.title} images")

    # -- the normalisation statistics travel with checkpoints ------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.mean is None:
            return {}
        return {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if len(state["mean"]) != self.spec.in_channels:
            raise DataError(f"the checkpoint's normalisation has {len(state['mean'])} channel(s), "
                            f"{self.spec.title} has {self.spec.in_channels}", hint="use the run's own data config")
        self.mean = torch.tensor(state["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(state["std"], dtype=torch.float32).view(1, -1, 1, 1)

    def encode_inputs(self, raw: list) -> tuple:
        """Images (file paths, .npy files, arrays, tensors) -> a normalised batch `(images,)` of the training shape."""
        from lightdist.vision.images import to_chw_uint8

        if self.mean is None:
            raise DataError("this data module has no normalisation statistics",
                            hint="restore it from a checkpoint (load_state_dict) or call setup() on the data")
        s = self.spec
        return (self.normalize(torch.stack([to_chw_uint8(x, s.in_channels, s.image_size) for x in raw])),)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> normalised float, on whatever device the images are."""
        x = images.float().div_(255.0)
        if self.mean.device != x.device:  # once: a copy from host memory makes the host wait for the GPU
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return (x - self.mean) / self.std

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        x = self.normalize(images)
        if self.trainer is not None:
            if self.augment is not None and self.trainer.training:
                x = self.augment(x)
            # Lightning casts inputs for the precision (bf16-true, DeepSpeed bf16) before the transfer,
            # when they were still uint8; the float images made here need the same cast.
            x = self.trainer.precision_plugin.convert_input(x)
        return x, labels
