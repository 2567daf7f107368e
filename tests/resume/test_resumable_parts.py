"""The parts of exact resume, in-process: samplers that skip what was consumed (in their epoch
only), per-sample augmentation seeds, and random generator states that survive a weights-only
checkpoint."""

import io
import random

import numpy as np
import pytest
import torch

from lightdist.callbacks.rng_state import collect, restore
from lightdist.data.resumable import SeededSamples, stateful_dataloader, training_loader
from lightdist.data.samplers import BucketBatchSampler


def loader(rank: int = 0, world: int = 1, **options):
    return training_loader(torch.arange(50), batch_size=4, world_size=world, rank=rank, shuffle=True, seed=3,
                           drop_last=False, seeded_samples=False, **options)


def batches(dl, epoch: int) -> list[list[int]]:
    it = iter(dl)  # Lightning makes the iterator, then sets the epoch (lazy samplers see the new one)
    dl.sampler.set_epoch(epoch)
    return [b.tolist() for b in it]


@pytest.mark.parametrize("world, workers", [(1, 0), (2, 0), (1, 2)])
def test_loader_resumes_mid_epoch(world, workers):
    for rank in range(world):
        straight = batches(loader(rank, world, num_workers=workers), epoch=1)
        first = loader(rank, world, num_workers=workers)
        it = iter(first)
        first.sampler.set_epoch(1)
        done = [next(it).tolist() for _ in range(3)]
        state = first.state_dict()
        resumed = loader(rank, world, num_workers=workers)
        resumed.load_state_dict(state)
        assert done + batches(resumed, epoch=1) == straight


def test_state_saved_at_an_epoch_end_does_not_skip_the_next_epoch():
    first = loader()
    batches(first, epoch=0)
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    assert batches(resumed, epoch=1) == batches(loader(), epoch=1)


def test_bucket_sampler_resumes_on_each_rank():
    lengths = np.random.default_rng(0).integers(1, 30, size=37)
    for rank in range(2):
        def make(rank=rank):
            sampler = BucketBatchSampler(lengths, batch_size=3, num_replicas=2, rank=rank, seed=5, bucket_batches=2)
            sampler.set_epoch(2)
            return stateful_dataloader(np.arange(37), batch_size=None, sampler=sampler, collate_fn=lambda b: b.tolist())
        straight = list(make())
        first = make()
        it = iter(first)
        done = [next(it) for _ in range(2)]
        resumed = make()
        resumed.load_state_dict(first.state_dict())
        assert done + list(resumed) == straight


def test_seeded_samples_depend_on_seed_epoch_and_index_only():
    noisy = SeededSamples(type("Noise", (), {"__getitem__": lambda self, i: torch.rand(3), "__len__": lambda self: 9})(),
                          seed=7)
    torch.manual_seed(0)
    a = [noisy[(1, i)] for i in range(5)]
    torch.manual_seed(1)
    b = [noisy[(1, i)] for i in reversed(range(5))][::-1]  # another order, another global state
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(noisy[(1, 0)], noisy[(2, 0)])
    before = torch.get_rng_state()
    noisy[(1, 0)]
    assert torch.equal(torch.get_rng_state(), before)  # the global generator untouched
    batch = noisy.__getitems__([(1, i) for i in range(5)])  # what the DataLoader calls: the same samples
    assert all(torch.equal(x, y) for x, y in zip(a, batch))
    assert torch.equal(torch.get_rng_state(), before)


def test_only_datasets_that_may_draw_are_seeded():
    from torch.utils.data import ConcatDataset, Subset, TensorDataset

    from lightdist.data.resumable import draws_random

    plain = TensorDataset(torch.arange(6))
    transformed = type("Transformed", (TensorDataset,), {"__getitem__": lambda self, i: torch.rand(1)})(torch.arange(6))
    declared = type("Declared", (TensorDataset,), {"draws_random": False, "__getitem__": lambda self, i: i})(torch.arange(6))
    assert not draws_random(plain) and not draws_random(Subset(ConcatDataset([plain, plain]), [0, 7]))
    assert not draws_random(declared)
    assert draws_random(transformed) and draws_random(ConcatDataset([plain, transformed]))
    assert draws_random(Subset(transformed, [1]))
    def loaded(dataset):
        return training_loader(dataset, batch_size=2, world_size=1, rank=0, shuffle=True, seed=0,
                               drop_last=False).dataset

    assert loaded(plain) is plain and isinstance(loaded(transformed), SeededSamples)


def test_generator_states_round_trip_through_a_weights_only_checkpoint():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()  # numpy keeps a cached gaussian
    buffer = io.BytesIO()
    torch.save(collect(), buffer)
    expected = torch.rand(4), np.random.normal(size=3), random.random()
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    buffer.seek(0)
    restore(torch.load(buffer, weights_only=True))
    got = torch.rand(4), np.random.normal(size=3), random.random()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
