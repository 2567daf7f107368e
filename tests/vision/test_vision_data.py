"""Vision data: canonical file formats (written in their exact layouts by tests/helpers/image_files.py), splits,
normalisation; the real Fashion-MNIST files' size and statistics."""

import gzip
import pickle

import numpy as np
import pytest
import torch

from lightdist.errors import DataError
from lightdist.vision.data import VisionDataModule, channel_stats
from tests.helpers.data import SHARED_DATA, needs_fashion_mnist
from tests.helpers.image_files import write_cifar10, write_cifar100, write_mnist


def test_cifar10_canonical_layout(tmp_path):
    folder = write_cifar10(tmp_path, per_batch=20)
    dm = VisionDataModule("cifar10", root=str(tmp_path), val_size=10, download=False)
    facts = dm.facts()
    assert facts["class_names"][0] == "airplane" and facts["num_classes"] == 10 and facts["in_channels"] == 3
    dm.setup("fit")
    assert len(dm.train_set) == 90 and len(dm.val_set) == 10 and len(dm.test_set) == 20
    images, labels = dm.train_set[0]
    assert images.shape == (3, 32, 32) and images.dtype == torch.uint8
    # The loader keeps rows exactly as stored: channel-major 3072-byte rows reshape to CHW.
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    assert torch.equal(dm.test_set.tensors[0][0], torch.from_numpy(raw["data"][0].reshape(3, 32, 32)))
    assert dm.test_set.tensors[1][0].item() == raw["labels"][0]
    x, _ = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert x.dtype == torch.float32 and abs(x.mean().item()) < 0.2


def test_cifar100_canonical_layout(tmp_path):
    write_cifar100(tmp_path)
    dm = VisionDataModule("cifar100", root=str(tmp_path), val_size=100, download=False)
    assert dm.facts()["num_classes"] == 100 and dm.facts()["class_names"][99] == "class99"
    dm.setup("fit")
    assert len(dm.train_set) == 200 and len(dm.test_set) == 100


def test_missing_dataset_names_the_fix(tmp_path):
    dm = VisionDataModule("cifar10", root=str(tmp_path), download=False)
    with pytest.raises(DataError) as err:
        dm.facts()
    assert "cifar-10-batches-py" in str(err.value) and str(tmp_path) in str(err.value)


def test_corrupt_cifar_batch(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    dm = VisionDataModule("cifar10", root=str(tmp_path), download=False)
    with pytest.raises(DataError, match="data_batch_3"):
        dm.setup("fit")


def test_idx_reader_and_truncation(tmp_path):
    folder = write_mnist(tmp_path, n_train=200, n_test=50)
    dm = VisionDataModule("mnist", root=str(tmp_path), val_size=20, download=False)
    dm.setup("fit")
    assert len(dm.train_set) == 180 and dm.train_set[0][0].shape == (1, 28, 28)
    # a truncated file is named in the error
    raw = gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes())
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz is truncated or not an IDX file"):
        VisionDataModule("mnist", root=str(tmp_path), download=False).setup("fit")


@needs_fashion_mnist
def test_fashion_mnist_real_files_split_and_stats():
    dm = VisionDataModule("fashion_mnist", root=str(SHARED_DATA), val_size=5000, download=False)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)
    # stratified: 500 validation images per class
    assert torch.bincount(dm.val_set.tensors[1]).tolist() == [500] * 10
    # the statistics are the training split's own (Fashion-MNIST: mean ~0.286, std ~0.353)
    assert dm.mean.item() == pytest.approx(0.286, abs=0.002) and dm.std.item() == pytest.approx(0.353, abs=0.002)
    # the same seed gives the same split; another seed another one
    again = VisionDataModule("fashion_mnist", root=str(SHARED_DATA), download=False)
    again.setup("fit")
    assert torch.equal(again.val_set.tensors[1], dm.val_set.tensors[1])
    assert torch.equal(again.val_set.tensors[0][:50], dm.val_set.tensors[0][:50])


def test_channel_stats_match_numpy():
    images = np.random.default_rng(1).integers(0, 256, (100, 3, 8, 8)).astype(np.uint8)
    mean, std = channel_stats(images, chunk=7)
    x = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=1e-4)


def test_torchvision_layout_and_the_dataset_folder_itself(tmp_path):
    """FashionMNIST/raw/ unpacked (as torchvision's download leaves it) reads as the gzipped release files do;
    data.root may also be the dataset's folder itself."""
    gz_root = tmp_path / "gz"
    folder = write_mnist(gz_root, n_train=100, n_test=30)
    raw = tmp_path / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in folder.iterdir():
        (raw / path.name.removesuffix(".gz")).write_bytes(gzip.decompress(path.read_bytes()))
    modules = [VisionDataModule("mnist", root=str(r), val_size=10, download=False)
               for r in (gz_root, tmp_path / "tv", folder)]
    for dm in modules:
        dm.setup("fit")
    assert modules[1]._folder == raw and modules[2]._folder == folder
    for dm in modules[1:]:
        assert torch.equal(dm.test_set.tensors[0], modules[0].test_set.tensors[0])
        assert torch.equal(dm.train_set.tensors[1], modules[0].train_set.tensors[1])


def test_failed_download_names_the_fix_and_leaves_no_folder(tmp_path, monkeypatch):
    from lightdist.vision import idx

    monkeypatch.setattr(idx.MNISTFiles, "mirrors", ["http://127.0.0.1:9/"])  # nothing listens there
    root = tmp_path / "not" / "yet"
    with pytest.raises(DataError, match="MNIST not found under .* could not be downloaded") as err:
        VisionDataModule("mnist", root=str(root), download=True).prepare_data()
    assert "mnist/" in err.value.hint
    assert list(tmp_path.iterdir()) == []
