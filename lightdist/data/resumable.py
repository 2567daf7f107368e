"""Training loaders that a run resumed mid-epoch continues exactly where it stopped.

torchdata's StatefulDataLoader has the state_dict/load_state_dict Lightning saves in checkpoints
and restores on resume; the samplers (lightdist.data.samplers) keep their epoch and position.
What neither library offers: augmentation randomness that does not depend on which loader
worker decodes a sample, or on how far a worker's random stream had got when the run stopped
(a resumed run starts new workers). SeededSamples draws each sample's randomness from
(seed, epoch, index) instead; only for datasets that may draw (draws_random), since seeding
costs several microseconds a sample, a few percent of a small model's step.
"""

import warnings
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from lightdist.data.samplers import ResumableDistributedSampler


class SeededSamples(Dataset):
    """`dataset`, indexed by the (epoch, index) pairs of ResumableDistributedSampler(with_epoch=True):
    each sample is loaded under torch's CPU generator seeded from (seed, epoch, index), and the
    generator of the process is left as it was (no draw of the main process depends on loading)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _load(self, epoch: int, index: int) -> Any:
        # the CPU generator only: torch.manual_seed would reseed the CUDA generators as well
        torch.random.default_generator.manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_000_007 + index) % 2**63)
        return self.dataset[index]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        with torch.random.fork_rng(devices=[]):
            return self._load(*key)

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[Any]:
        """A batch (torch's DataLoader calls this when it exists): the generator saved and restored once,
        each sample still seeded from its own (seed, epoch, index) as in __getitem__."""
        with torch.random.fork_rng(devices=[]):
            return [self._load(epoch, index) for epoch, index in keys]


def draws_random(dataset: Dataset) -> bool:
    """Whether loading a sample of `dataset` may draw from torch's generator, so that it needs seeding.

    False only when that is known: a TensorDataset (its own __getitem__, indexing tensors), a Subset or
    ConcatDataset of such, or a dataset whose class says `draws_random = False` (its author vouches
    that __getitem__ draws nothing, e.g. no random transform). Anything else is seeded."""
    declared = getattr(type(dataset), "draws_random", None)
    if isinstance(declared, bool):
        return declared
    kind = type(dataset)
    if isinstance(dataset, TensorDataset) and kind.__getitem__ is TensorDataset.__getitem__:
        return False
    if (isinstance(dataset, Subset) and kind.__getitem__ is Subset.__getitem__
            and getattr(kind, "__getitems__", None) is getattr(Subset, "__getitems__", None)):
        return draws_random(dataset.dataset)
    if isinstance(dataset, ConcatDataset) and kind.__getitem__ is ConcatDataset.__getitem__:
        return any(draws_random(d) for d in dataset.datasets)
    return True


def stateful_dataloader(*args: Any, **kwargs: Any) -> StatefulDataLoader:
    """torchdata's StatefulDataLoader, without the deprecation warning torchdata 0.11 makes torch >= 2.10
    print for every loader (it calls torch.set_vital)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
        return StatefulDataLoader(*args, **kwargs)


def training_loader(dataset: Dataset, *, batch_size: int | None, world_size: int, rank: int, shuffle: bool,
                    seed: int, drop_last: bool, stateful: bool = True, seeded_samples: bool = True,
                    **loader_options: Any) -> DataLoader:
    """A loader over a ResumableDistributedSampler (one for a single process too, so the order depends
    on (seed, epoch) only), its samples seeded (SeededSamples) unless `seeded_samples` is false or the
    dataset draws nothing (draws_random); a
    StatefulDataLoader unless `stateful` is false (then a resumed run starts the epoch's order again,
    but a run never interrupted is the same). The loader's own generator (the workers' base seed)
    leaves the global one untouched."""
    seeded_samples = seeded_samples and draws_random(dataset)
    sampler = ResumableDistributedSampler(dataset, world_size, rank, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                          with_epoch=seeded_samples)
    return (stateful_dataloader if stateful else DataLoader)(
        SeededSamples(dataset, seed) if seeded_samples else dataset, batch_size=batch_size, sampler=sampler,
        drop_last=drop_last, generator=torch.Generator().manual_seed(seed), **loader_options)
