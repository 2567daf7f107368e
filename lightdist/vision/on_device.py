"""Image datasets kept on the training device as uint8 tensors (data.on_device=true).

Each split moves to the rank's device once, at setup; a batch is then an index_select there: no
loader workers, no host-to-device copy per step (one small copy of the epoch's order per epoch).
The training order is ResumableDistributedSampler's for (seed, epoch, rank, world size), the one
the ordinary loader follows, and the loader keeps its position the way that sampler does, so DDP
sharding and exact resume work as before. Normalisation and augmentation stay where they are, in
the data module's on_after_batch_transfer, and now find the batch already on the device.
"""

import math
import os
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from lightdist.data.samplers import ResumableDistributedSampler
from lightdist.errors import ConfigError

# the resident images may take this share of the device's free memory (of RAM on a CPU)
MEMORY_SHARE = 0.5


class DeviceBatches:
    """(images[i], labels[i]) batches of tensors that already are where the model is, `i` running
    through `order` (any sized iterable of indices; a sampler gets set_epoch from Lightning, which
    looks for it under the name `sampler`). Lightning takes any iterable with a length as a loader."""

    batch_sampler = None  # as on a DataLoader that batches by itself: Lightning inspects both names

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, order: Sized,
                 drop_last: bool = False):
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.sampler = order
        self.drop_last = drop_last
        self._epoch = -1
        self._yielded = 0  # indices of this epoch's order taken, counting those skipped on resume

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A generator: its body runs at the first next(), after Lightning's set_epoch.
        indices = list(self.sampler)  # a resumed sampler yields only what its epoch had left
        self._epoch = getattr(self.sampler, "epoch", 0)
        self._yielded = len(self.sampler) - len(indices)
        order = torch.tensor(indices, dtype=torch.int64).to(self.images.device, non_blocking=True)
        stop = len(indices) - len(indices) % self.batch_size if self.drop_last else len(indices)
        for start in range(0, stop, self.batch_size):
            index = order[start : start + self.batch_size]
            self._yielded += len(index)
            yield self.images.index_select(0, index), self.labels.index_select(0, index)


class ResumableDeviceBatches(DeviceBatches):
    """DeviceBatches over a ResumableDistributedSampler that Lightning saves and restores in checkpoints:
    the state is the sampler's own (epoch, items taken, world size), so a resume skips what was trained
    and, at another world size, does what the sampler does."""

    sampler: ResumableDistributedSampler

    def state_dict(self) -> dict[str, int]:
        epoch = int(self.sampler.epoch)
        return {"epoch": epoch, "yielded": self._yielded if epoch == self._epoch else 0,
                "replicas": int(self.sampler.num_replicas)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


def device_loader(dataset: Dataset, training: bool, *, batch_size: int, world_size: int, rank: int, shuffle: bool,
                  drop_last: bool, resumable: bool) -> DeviceBatches:
    """The on-device loader of a TensorDataset (images, labels): training in the ordinary training
    loader's order; evaluation in order, rank r taking samples r, r + W, ... (each once across ranks,
    as UnpaddedDistributedSampler does)."""
    images, labels = dataset.tensors  # type: ignore[attr-defined]
    if not training:
        return DeviceBatches(images, labels, batch_size, range(rank, len(images), world_size))
    sampler = ResumableDistributedSampler(dataset, world_size, rank, shuffle=shuffle,
                                          seed=int(os.environ.get("PL_GLOBAL_SEED", 0)), drop_last=drop_last)
    return (ResumableDeviceBatches if resumable else DeviceBatches)(images, labels, batch_size, sampler, drop_last)


def memory_budget(device: torch.device) -> int:
    """Bytes the resident images may take on `device`: a share of what is free there."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * MEMORY_SHARE)
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**62  # unknown: no limit
    return int(free * MEMORY_SHARE)


def check_fits(nbytes: int, device: torch.device, what: str) -> None:
    budget = memory_budget(device)
    if nbytes > budget:
        raise ConfigError(f"data.on_device=true: {what} take {nbytes / 2**30:.1f} GiB as uint8, more than "
                          f"{MEMORY_SHARE:.0%} of the free memory of {device} ({budget / 2**30:.1f} GiB)",
                          hint="set data.on_device=false (loader workers), or use a smaller data.image_size "
                               "or data.train_subset")


def to_device(splits: dict[str, TensorDataset], device: torch.device, what: str) -> dict[str, TensorDataset]:
    """The splits' tensors moved to `device` once, after checking they fit (on the CPU they already are there)."""
    if device.type != "cpu":
        check_fits(sum(t.numel() * t.element_size() for s in splits.values() for t in s.tensors), device,
                   what)
    return {name: TensorDataset(*(t.to(device) for t in s.tensors)) for name, s in splits.items()}


def run_device(module: Any) -> torch.device:
    """The device this rank trains on (its strategy's root device); the CPU without a trainer."""
    trainer = getattr(module, "trainer", None)
    return trainer.strategy.root_device if trainer is not None else torch.device("cpu")


class OnDevice:
    """Mixin for a ClassificationDataModule whose setup() leaves TensorDatasets of uint8 images and
    labels: with `on_device` its loaders are DeviceBatches over them."""

    on_device: bool = False

    def resident(self, what: str) -> None:
        """Move train_set, val_set and test_set (TensorDatasets) to the run's device; call at the end of setup()."""
        splits = to_device({"train": self.train_set, "val": self.val_set, "test": self.test_set},
                           run_device(self), what)
        self.train_set, self.val_set, self.test_set = splits["train"], splits["val"], splits["test"]

    def _loader(self, dataset: Dataset, training: bool):
        if not self.on_device:
            return super()._loader(dataset, training)  # type: ignore[misc]
        trainer = self.trainer  # type: ignore[attr-defined]
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        overfit = self._overfitting()  # type: ignore[attr-defined]
        return device_loader(dataset, training, batch_size=self.batch_size if training else self.eval_batch_size,  # type: ignore[attr-defined]
                             world_size=world, rank=rank, shuffle=self.shuffle and not overfit,  # type: ignore[attr-defined]
                             drop_last=self.drop_last, resumable=self.exact_resume)  # type: ignore[attr-defined]
