"""data.on_device=true: the splits as uint8 tensors on the run's device, batches gathered there.

The batches equal the ordinary loader's (values and order, after normalisation), DDP ranks share
the data out as the ordinary sampler does, the loader resumes where it stopped, and a CLI run
interrupted mid-epoch and resumed ends identical to one run straight through.
"""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lightdist.errors import ConfigError
from lightdist.vision.data import VisionDataModule
from lightdist.vision.folder import ImageFilesDataModule
from lightdist.vision.on_device import DeviceBatches, ResumableDeviceBatches
from tests.helpers.data import SHARED_DATA, needs_fashion_mnist
from tests.helpers.image_files import write_cifar10, write_class_folders
from tests.helpers.interrupt import train_losses
from tests.resume.test_exact_resume import IMAGE, assert_identical, straight_and_interrupted


def fake_trainer(world: int, rank: int) -> SimpleNamespace:
    """What the loaders read of a trainer: ranks, overfitting and the device."""
    return SimpleNamespace(world_size=world, global_rank=rank, overfit_batches=0,
                           strategy=SimpleNamespace(root_device=torch.device("cpu")))


def pair(make, world: int = 1, rank: int = 0):
    """The same data module built twice, ordinary and on the device, set up."""
    modules = []
    for on_device in (False, True):
        dm = make(on_device)
        dm.trainer = fake_trainer(world, rank) if world > 1 else None
        dm.setup("fit")
        modules.append(dm)
    return modules


def batches(loader, epoch: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if epoch is not None:
        loader.sampler.set_epoch(epoch)
    return [(images, labels) for images, labels in loader]


def assert_same_batches(ordinary, on_device, normalize) -> None:
    assert len(ordinary) == len(on_device) > 1
    for (xa, ya), (xb, yb) in zip(ordinary, on_device, strict=True):
        assert torch.equal(ya, yb)
        assert xb.dtype == torch.uint8 and torch.equal(normalize(xa), normalize(xb))


def check_module_pair(plain: VisionDataModule, device: VisionDataModule) -> None:
    assert isinstance(device.train_dataloader(), ResumableDeviceBatches)
    for epoch in (0, 3):  # a shuffled epoch's order depends on (seed, epoch)
        assert_same_batches(batches(plain.train_dataloader(), epoch), batches(device.train_dataloader(), epoch),
                            plain.normalize)
    assert_same_batches(batches(plain.val_dataloader()), batches(device.val_dataloader()), plain.normalize)
    assert_same_batches(batches(plain.test_dataloader()), batches(device.test_dataloader()), plain.normalize)
    assert torch.equal(plain.mean, device.mean) and torch.equal(plain.std, device.std)


@needs_fashion_mnist
def test_fashion_mnist_batches_equal_the_loaders():
    def make(on_device: bool) -> VisionDataModule:
        return VisionDataModule("fashion_mnist", str(SHARED_DATA), batch_size=64, eval_batch_size=100, val_size=500,
                                train_subset=600, val_subset=200, test_subset=300, download=False, on_device=on_device)

    check_module_pair(*pair(make))


def test_cifar10_batches_equal_the_loaders(workdir):
    write_cifar10(workdir, per_batch=40)

    def make(on_device: bool) -> VisionDataModule:
        return VisionDataModule("cifar10", str(workdir), batch_size=16, eval_batch_size=25, val_size=30,
                                download=False, drop_last=True, on_device=on_device)

    check_module_pair(*pair(make))


def test_ddp_ranks_share_the_data_as_the_sampler_does(workdir):
    """Two simulated ranks: each gets the ordinary loader's batches, together every sample once."""
    write_cifar10(workdir, per_batch=30)  # 150 images, 40 held out: 110 to share over 2 ranks

    def make(on_device: bool) -> VisionDataModule:
        return VisionDataModule("cifar10", str(workdir), batch_size=8, val_size=40, download=False,
                                on_device=on_device)

    seen = []
    for rank in (0, 1):
        plain, device = pair(make, world=2, rank=rank)
        ours = batches(device.train_dataloader(), epoch=1)
        assert_same_batches(batches(plain.train_dataloader(), epoch=1), ours, plain.normalize)
        seen.append(torch.cat([images.flatten(1) for images, _ in ours]))
        val_plain, val_ours = batches(plain.val_dataloader()), batches(device.val_dataloader())
        assert_same_batches(val_plain, val_ours, plain.normalize)
    assert len(seen[0]) == len(seen[1]) == 55
    # together one epoch: every training image once (110 distinct images)
    assert len(torch.unique(torch.cat(seen), dim=0)) == 110


def test_the_loader_resumes_where_it_stopped(workdir):
    """State after 3 batches, loaded into a new loader: the rest of the epoch, then the next epoch whole."""
    write_cifar10(workdir, per_batch=40)
    dm = VisionDataModule("cifar10", str(workdir), batch_size=16, val_size=40, download=False, on_device=True)
    dm.setup("fit")
    straight = dm.train_dataloader()
    epoch2 = batches(straight, epoch=2)
    first = dm.train_dataloader()
    first.sampler.set_epoch(2)
    it = iter(first)
    for _ in range(3):
        next(it)
    state = first.state_dict()
    assert state == {"epoch": 2, "yielded": 48, "replicas": 1}

    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    rest = batches(resumed, epoch=2)
    assert len(rest) == len(epoch2) - 3
    assert all(torch.equal(a[0], b[0]) for a, b in zip(rest, epoch2[3:], strict=True))
    assert resumed.state_dict()["yielded"] == 160
    assert len(batches(resumed, epoch=3)) == len(epoch2)  # the next epoch starts from its beginning


def test_without_exact_resume_the_loader_keeps_no_state(workdir):
    write_cifar10(workdir, per_batch=20)
    dm = VisionDataModule("cifar10", str(workdir), val_size=20, download=False, on_device=True)
    dm.exact_resume = False
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert type(loader) is DeviceBatches and not hasattr(loader, "state_dict")


def test_image_folder_decoded_once_and_augmented_on_the_device(workdir):
    data = write_class_folders(workdir / "images", {"red": (200, 30, 30), "blue": (30, 30, 200)}, per_class=20,
                               size=20)

    def make(on_device: bool) -> ImageFilesDataModule:
        return ImageFilesDataModule(path=str(data), image_size=16, batch_size=8, eval_batch_size=3, val_size=0.2, test_size=0.2,
                                    stats_file=None, on_device=on_device)

    plain, device = pair(make)
    # evaluation: the same preset, so the same images
    assert_same_batches(batches(plain.val_dataloader()), batches(device.val_dataloader()), plain.normalize)
    (images, labels), *_ = batches(device.train_dataloader(), epoch=0)
    crops = device.device_augment(device.normalize(images))
    assert crops.shape == (8, 3, 16, 16) and torch.isfinite(crops).all()
    with pytest.raises(ConfigError, match="data.on_device=false"):
        ImageFilesDataModule(path=str(data), auto_augment="randaugment", on_device=True)


def test_a_set_too_large_for_the_device_is_refused_in_one_line(workdir, monkeypatch):
    data = write_class_folders(workdir / "images", {"red": (200, 30, 30), "blue": (30, 30, 200)}, per_class=10)
    dm = ImageFilesDataModule(path=str(data), image_size=16, val_size=0.2, test_size=0.2, stats_file=None,
                              on_device=True)
    budget = 20 * 3 * 16 * 16 - 1  # one byte less than the 20 decoded images take
    monkeypatch.setattr("lightdist.vision.on_device.memory_budget", lambda device: budget)
    with pytest.raises(ConfigError, match="data.on_device=false") as error:
        dm.setup("fit")
    assert "\n" not in str(error.value)
    monkeypatch.setattr("lightdist.vision.on_device.memory_budget", lambda device: budget + 1)
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 20


def test_a_run_on_the_device_resumes_exactly(workdir):
    """Straight through, and interrupted after the 3rd of 5 batches and resumed: the same losses at every
    step and the same final weights (fp64, deterministic; crops and flips on the device)."""
    (workdir / "b").mkdir()
    args = [*(a for a in IMAGE if not a.startswith(("data.train_subset=", "trainer.max_epochs="))),
            "data.train_subset=160", "trainer.max_epochs=1", "data.on_device=true"]
    run_a, run_b, resumed = straight_and_interrupted(workdir, args, [3])
    assert_identical(run_a, run_b, resumed)
    assert "on_device: true" in Path(run_a, "config.yaml").read_text()
    assert len(train_losses(run_a)) == 5  # it trained, a loss logged at every step
