"""The image-folder experiments run as documented: the GPU recipe passes the preflight on a folder, the
fine-tuning recipe trains from a local weights file (offline), on CPU-sized overrides."""

import warnings

import numpy as np
import pytest
import torch
from torchvision.io import write_png

from tests.helpers.cli import QUIET, read_summary, run_cli, run_dirs


def write_two_classes(root, per_class: int = 24, size: int = 40):
    """root/<class>/<i>.png: bright or dark squares with noise, RGB."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("dark", "bright")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = 70 + 110 * label + rng.normal(0, 25, (3, size, size))
            write_png(torch.from_numpy(np.clip(pixels, 0, 255).astype(np.uint8)), str(root / name / f"{i}.png"))
    return root


@pytest.fixture
def images(tmp_path):
    # torchvision 0.29 announces TorchCodec as its successor on every encode
    warnings.filterwarnings("ignore", "The image decoding and encoding capabilities", DeprecationWarning)
    return write_two_classes(tmp_path / "images")


def test_resnet50_recipe_passes_the_preflight_on_a_folder(images, workdir):
    proc = run_cli(["preflight", "+experiment=imagefolder_resnet50", f"data.path={images}", "trainer=cpu",
                    "strategy=auto", "data.test_size=4", "data.val_size=4"], cwd=workdir)
    assert "ok: +experiment=imagefolder_resnet50" in proc.stdout + proc.stderr


def test_finetune_recipe_trains_from_a_local_weights_file(images, workdir):
    import timm
    from safetensors.torch import save_file

    weights = workdir / "resnet18.safetensors"  # stands in for downloaded pretrained weights (1000 classes)
    save_file(timm.create_model("resnet18", num_classes=1000).state_dict(), str(weights))
    run_cli(["+experiment=imagefolder_finetune", f"data.path={images}", "trainer=cpu", "trainer.precision=32-true",
             "model.name=resnet18", f"model.weights={weights}", "data.image_size=32", "data.batch_size=8",
             "data.num_workers=0", "data.persistent_workers=false", "data.val_size=8", "data.test_size=8",
             "transfer.freeze_backbone_epochs=1", "trainer.max_epochs=2", "trainer.limit_train_batches=2",
             "channels_last=false", *QUIET], cwd=workdir, timeout=240)
    (run_dir,) = run_dirs(workdir, "imagefolder_finetune")
    summary = read_summary(run_dir)
    assert summary["epochs"] == 2 and "test/acc" in summary["test"]
    # normalised with the backbone's ImageNet statistics (data.normalize=auto), not the folder's own
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["ImageFilesDataModule"]
    assert state["class_names"] == ["bright", "dark"]
    np.testing.assert_allclose(state["mean"], [0.485, 0.456, 0.406], atol=1e-6)
