"""Samplers that Lightning or torch do not offer as public API."""

import collections
import itertools
import logging
import operator
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from torch.utils.data import DistributedSampler

log = logging.getLogger(__name__)


class ResumablePosition:
    """state_dict/load_state_dict of a DistributedSampler: its epoch and how many items it yielded.

    torchdata's StatefulDataLoader saves and restores a sampler that has them (Lightning keeps the
    loader's state in checkpoints); restored, the next iteration skips what was consumed, but only
    in the saved epoch: Lightning restores a loader saved at an epoch's end too, then moves to the
    next epoch (set_epoch), which starts from its beginning. torchdata's StatefulDistributedSampler
    keeps the position without the epoch, so it would skip samples of the next epoch.
    """

    _resume_at: tuple[int, int, int] | None = None
    _taking: Iterator | None = None  # this epoch's list iterator, items are taken from
    _total = 0  # its length at the epoch's start

    @property
    def yielded(self) -> int:
        """Items of this epoch's order taken (those skipped on a resume included), read off the list
        iterator's length hint: taking an item runs no Python."""
        return 0 if self._taking is None else self._total - operator.length_hint(self._taking)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._taking = None
        super().set_epoch(epoch)  # type: ignore[misc]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "yielded": int(self.yielded), "replicas": int(self.num_replicas)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # the checkpoint holds rank 0's position; every rank had taken as many items
        self._resume_at = int(state["epoch"]), int(state["yielded"]), int(state.get("replicas", self.num_replicas))

    def _position_from(self, done: int, replicas: int) -> int:
        """Where this rank resumes an epoch of which each of `replicas` ranks (another world size) had
        taken `done` items: the epoch's beginning, unless the sampler can say exactly."""
        if self.rank == 0:  # type: ignore[attr-defined]
            log.warning(f"the training loader's position was saved by {replicas} ranks and is resumed on "
                        f"{self.num_replicas}: the interrupted epoch starts again from its beginning")  # type: ignore[attr-defined]
        return 0

    def _resumed(self, order: Callable[[], Iterator], wrap: Callable[[Iterator], Iterator] | None = None) -> Iterator:
        """The items of `order()` (a list iterator) from where a resumed epoch stopped, through `wrap`.
        Only itertools between the list and the loader: a step of a small model feels each Python
        call per sample, and torchdata's batch sampler already makes two."""
        return itertools.chain.from_iterable(self._epoch(order, wrap))

    def _epoch(self, order: Callable[[], Iterator], wrap: Callable[[Iterator], Iterator] | None) -> Iterator:
        # a generator: its body runs at the first next(), after Lightning's set_epoch (Lightning creates
        # the iterator before it sets a resumed run's epoch)
        start = 0
        if self._resume_at is not None:
            epoch, done, replicas = self._resume_at
            self._resume_at = None
            if epoch == self.epoch:
                start = done if replicas == self.num_replicas else self._position_from(done, replicas)  # type: ignore[attr-defined]
        items = order()
        self._taking, self._total = items, operator.length_hint(items)
        collections.deque(itertools.islice(items, start), maxlen=0)  # what the interrupted run took
        yield items if wrap is None else wrap(items)


class ResumableDistributedSampler(ResumablePosition, DistributedSampler):
    """torch's DistributedSampler (also for one process: the order depends on seed and epoch only,
    not on a generator's history), resumable; with `with_epoch` it yields (epoch, index) pairs for a
    dataset that draws each sample's randomness from them (lightdist.data.resumable.SeededSamples)."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, with_epoch: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.with_epoch = with_epoch

    def _position_from(self, done: int, replicas: int) -> int:
        # Ranks deal one permutation round-robin, so together they had taken its first done x replicas
        # items: exact at the new world size when that many split evenly over its ranks.
        taken = done * replicas
        return taken // self.num_replicas if taken % self.num_replicas == 0 else super()._position_from(done, replicas)

    def __iter__(self):
        # DistributedSampler's order is drawn at the first next(), after set_epoch
        return self._resumed(partial(DistributedSampler.__iter__, self),
                             (lambda items: zip(itertools.repeat(self.epoch), items)) if self.with_epoch else None)


class UnpaddedDistributedSampler(DistributedSampler):
    """Shards an evaluation set across ranks without repeating samples.

    torch's DistributedSampler pads the dataset to a multiple of the world size by
    repeating samples, so validation/test metrics of a DDP run would count some samples
    twice. Here rank r takes indices r, r + W, r + 2W, ...: ranks may get one sample
    fewer, which evaluation tolerates (no gradient collectives), and synced torchmetrics
    then see each sample exactly once. Lightning keeps the same idea private (for
    predict only) and leaves DistributedSampler subclasses in place, so this one is used
    as is.
    """

    def __init__(self, dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self):
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


class BucketBatchSampler(ResumablePosition, DistributedSampler):
    """Batches of samples of similar length, sharded over ranks: little padding, every sample once.

    Each epoch (same seed on every rank) the indices are shuffled, cut into buckets of
    `bucket_batches` global batches, sorted by length inside each bucket and cut into global
    batches of `batch_size * num_replicas`; the order of the global batches is shuffled and
    rank r takes items r, r + W, ... of each, so all ranks get batches of similar length
    (no rank waits for another at the gradient all-reduce). Without shuffling (evaluation)
    the whole set is sorted by length.

    Unlike torch's DistributedSampler, nothing is repeated to even out ranks: a last global
    batch too small to give every rank a sample joins the one before it, so every rank runs
    the same number of steps and each sample is seen exactly once per epoch across ranks
    (with drop_last, the incomplete last global batch is dropped instead).

    It yields lists of indices, so the DataLoader takes it as its `sampler` with
    `batch_size=None` and the dataset's __getitem__ accepts a list. Being a
    DistributedSampler, Lightning leaves it in place instead of injecting its own.
    """

    def __init__(self, lengths, batch_size: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, bucket_batches: int = 50):
        super().__init__(lengths, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        import numpy as np

        if batch_size < 1 or bucket_batches < 1:
            raise ValueError("batch_size and bucket_batches must be at least 1")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.bucket_batches = bucket_batches
        self.num_samples = len(self)
        self.total_size = len(self.lengths)

    def _global_batches(self) -> list:
        import numpy as np

        n, per_step = len(self.lengths), self.batch_size * self.num_replicas
        rng = np.random.default_rng(self.seed + self.epoch)
        if self.shuffle:
            order = rng.permutation(n)
            bucket = per_step * self.bucket_batches
        else:
            order, bucket = np.arange(n), max(n, 1)
        batches = []
        for start in range(0, n, bucket):
            chunk = order[start : start + bucket]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + per_step] for i in range(0, len(chunk), per_step)]
        if batches and len(batches[-1]) < per_step:
            if self.drop_last:
                batches.pop()
            elif len(batches[-1]) < self.num_replicas and len(batches) > 1:
                tail = batches.pop()
                batches[-1] = np.concatenate([batches[-1], tail])
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _mine(self) -> Iterator[list[int]]:
        mine = (batch[self.rank :: self.num_replicas] for batch in self._global_batches())
        return iter([m.tolist() for m in mine if len(m)])

    def __iter__(self):
        return self._resumed(self._mine)  # position restored by a StatefulDataLoader (ResumablePosition)

    def __len__(self) -> int:
        n, per_step = len(self.lengths), self.batch_size * self.num_replicas
        if self.drop_last:
            return n // per_step
        full, rest = divmod(n, per_step)
        if rest == 0:
            return full
        if rest < self.num_replicas:
            # joins the batch before it; alone (no batch before) it reaches only the first `rest` ranks
            return full if full > 0 else int(self.rank < rest)
        return full + 1
