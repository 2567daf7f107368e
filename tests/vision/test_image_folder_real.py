"""Real Fashion-MNIST images written as PNG and JPEG files in both folder layouts (class folders;
train/ and test/ of class folders): data=image_folder decodes the IDX pipeline's pixels and trains
to its accuracy on the same images."""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import write_jpeg, write_png

from lightdist.vision.data import VisionDataModule
from lightdist.vision.folder import ImageFilesDataModule
from lightdist.vision.idx import FashionMNISTFiles, read_split, write_idx
from tests.helpers.cli import QUIET, read_summary, run_cli, run_dirs
from tests.helpers.data import SHARED_DATA, needs_fashion_mnist

pytestmark = needs_fashion_mnist

N_TRAIN, N_TEST, VAL = 2000, 500, 200
# A digit first: the folder names sort in label order, so both pipelines list the images alike and
# draw the same seeded validation split.
CLASSES = [f"{i}_{name.replace('/', '-').replace(' ', '-')}" for i, name in enumerate(FashionMNISTFiles.classes)]


def _subset(prefix: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n seeded images of a split, ordered by class (the order a folder lists them in)."""
    images, labels = read_split(SHARED_DATA / "fashion-mnist", prefix, FashionMNISTFiles)
    pick = np.sort(rng.choice(len(labels), n, replace=False))
    pick = pick[np.argsort(labels[pick], kind="stable")]
    return images[pick], labels[pick]


@pytest.fixture(scope="module")
def fashion_files(tmp_path_factory) -> Path:
    """root/idx/fashion-mnist/ (the subset as IDX files), root/{png,jpeg}/{train,test}/<class>/ and the
    same files in root/{png,jpeg}_flat/<class>/ (hard links: one class-folder layout of all images)."""
    root = tmp_path_factory.mktemp("fashion-files")
    rng = np.random.default_rng(0)
    # torchvision 0.29 announces TorchCodec as its successor on every encode
    warnings.filterwarnings("ignore", "The image decoding and encoding capabilities", DeprecationWarning)
    (root / "idx" / "fashion-mnist").mkdir(parents=True)
    for split, prefix, n in (("train", "train", N_TRAIN), ("test", "t10k", N_TEST)):
        images, labels = _subset(prefix, n, rng)
        write_idx(root / "idx" / "fashion-mnist" / f"{prefix}-images-idx3-ubyte.gz", images[:, 0])
        write_idx(root / "idx" / "fashion-mnist" / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
        for fmt, write in (("png", write_png), ("jpeg", lambda x, f: write_jpeg(x, f, quality=95))):
            for i, (image, label) in enumerate(zip(images, labels)):
                folder, flat = root / fmt / split / CLASSES[label], root / f"{fmt}_flat" / CLASSES[label]
                folder.mkdir(parents=True, exist_ok=True)
                flat.mkdir(parents=True, exist_ok=True)
                name = f"{split}{i:04d}.{fmt}"
                write(torch.from_numpy(image), str(folder / name))
                os.link(folder / name, flat / name)
    return root


def _folder_module(path: Path) -> ImageFilesDataModule:
    # no resizing (28 px in, 28 px out), no random crop or flip: the pixels as stored
    return ImageFilesDataModule(path=str(path), channels=1, image_size=28, crop_scale=(1.0, 1.0), crop_fraction=1.0,
                                horizontal_flip=False, normalize="dataset", stats_samples=N_TRAIN, val_size=VAL)


def _images(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def test_png_files_decode_to_the_idx_pixels_and_splits(fashion_files):
    ref = VisionDataModule("fashion_mnist", root=str(fashion_files / "idx"), val_size=VAL, download=False)
    ref.setup("fit")
    png = _folder_module(fashion_files / "png")
    png.setup("fit")
    assert png.facts()["class_names"] == CLASSES and png.facts()["in_channels"] == 1
    for split in ("train_set", "val_set", "test_set"):
        want, got = getattr(ref, split), getattr(png, split)
        assert torch.equal(torch.as_tensor(got.labels), want.tensors[1]), split  # the same seeded split
        assert torch.equal(_images(got), want.tensors[0]), split  # PNG is lossless: the same pixels
    torch.testing.assert_close(png.mean, ref.mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(png.std, ref.std, rtol=0, atol=1e-5)

    jpeg = _folder_module(fashion_files / "jpeg")
    jpeg.setup("fit")
    assert torch.equal(torch.as_tensor(jpeg.test_set.labels), ref.test_set.tensors[1])
    error = (_images(jpeg.test_set).float() - ref.test_set.tensors[0].float()).abs().mean()
    assert 0 < error < 2.0, error  # JPEG at quality 95: close, not equal

    for fmt in ("png_flat", "jpeg_flat"):  # one class-folder layout: every image, splits drawn
        flat = _folder_module(fashion_files / fmt)
        sizes = [len(s[0]) for s in flat.splits().values()]
        assert flat.facts()["class_names"] == CLASSES and sum(sizes) == N_TRAIN + N_TEST, (fmt, sizes)


def test_folder_pipeline_reaches_the_idx_accuracy_on_the_same_images(fashion_files, workdir):
    # The same model, seed and steps, and the same draws from torch's generator in the main process:
    # one loader worker on both sides (the folder pipeline's random crop draws even when it keeps the
    # whole image; in a worker it draws from the worker's generator), and no dropout. The two runs then
    # see the same batches in the same order (here they give equal metrics).
    same = ["model=simple_cnn", "model.channels=[8,16]", "model.hidden=64", "model.dropout=0", "optimizer=adamw",
            "optimizer.lr=3e-3", "optimizer.weight_decay=0.05", "scheduler=cosine", "scheduler.warmup_epochs=0.5",
            "task.label_smoothing=0.1", "seed=7", "trainer.max_epochs=2", "data.batch_size=64",
            "data.eval_batch_size=256", f"data.val_size={VAL}", "trainer.num_sanity_val_steps=0",
            "threads_per_rank=2", "data.num_workers=1", "data.persistent_workers=false", *QUIET]
    run_cli(["data=fashion_mnist", f"data.root={fashion_files / 'idx'}", "data.download=false",
             "data.augment.crop_padding=0", "data.augment.horizontal_flip=false", "name=idx", *same], cwd=workdir)
    run_cli(["+experiment=imagefolder_cnn", f"data.path={fashion_files / 'png'}", "data.channels=1",
             "data.image_size=28", "data.crop_scale=[1.0,1.0]", "data.horizontal_flip=false", "data.verify_files=false",
             f"data.stats_samples={N_TRAIN}", "name=folder", *same], cwd=workdir)
    (idx_run,) = run_dirs(workdir, "idx")
    (folder_run,) = run_dirs(workdir, "folder")
    idx_acc = read_summary(idx_run)["test"]["test/acc"]
    folder_acc = read_summary(folder_run)["test"]["test/acc"]
    assert idx_acc > 0.7, idx_acc  # it learned: a linear model on pixels reaches about 0.83 on all the data
    assert abs(folder_acc - idx_acc) <= 0.01, (folder_acc, idx_acc)
