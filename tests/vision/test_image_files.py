"""Users' images (data=image_folder, data=image_table): layouts, manifests, formats, bad inputs, splits,
MixUp/CutMix soft targets, and one end-to-end run whose class names reach the checkpoint and the eval report."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lightdist.errors import ConfigError, DataError
from lightdist.vision import transforms as T
from lightdist.vision.files import Encoded, ImageFiles, collate_images, decode, decode_batch
from lightdist.vision.folder import ImageFilesDataModule
from tests.helpers.cli import QUIET, run_cli, run_dirs
from tests.helpers.image_files import write_class_folders

COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "eel": (40, 40, 200)}


def module(**kwargs) -> ImageFilesDataModule:
    return ImageFilesDataModule(image_size=16, batch_size=4, stats_samples=20, **kwargs)


def loaded_split(dm: ImageFilesDataModule, split: str) -> tuple[list[Path], list[str]]:
    paths, labels = dm.splits()[split]
    return paths, [dm.class_names[i] for i in labels]


# -- layouts and manifests ------------------------------------------------------------------------
def test_flat_folder_draws_seeded_stratified_disjoint_splits(tmp_path):
    write_class_folders(tmp_path / "imgs", COLOURS, per_class=10)
    dm = module(path=str(tmp_path / "imgs"), val_size=0.2, test_size=0.1)
    assert dm.facts() == {"num_classes": 3, "in_channels": 3, "image_size": 16, "class_names": ["cat", "dog", "eel"]}
    splits = {s: loaded_split(dm, s) for s in ("train", "val", "test")}
    assert [len(splits[s][0]) for s in ("train", "val", "test")] == [21, 6, 3]
    assert sorted(splits["val"][1]) == ["cat", "cat", "dog", "dog", "eel", "eel"]  # stratified
    assert sorted(splits["test"][1]) == ["cat", "dog", "eel"]
    everything = [p for s in splits.values() for p in s[0]]
    assert len(set(everything)) == 30  # disjoint, nothing lost
    again = module(path=str(tmp_path / "imgs"), val_size=0.2, test_size=0.1)
    assert loaded_split(again, "val") == splits["val"]  # the same seed draws the same split
    other = module(path=str(tmp_path / "imgs"), val_size=0.2, test_size=0.1, split_seed=1)
    assert loaded_split(other, "val")[0] != splits["val"][0]


def test_split_folders_are_used_as_given_and_missing_ones_drawn(tmp_path):
    write_class_folders(tmp_path / "imgs" / "train", COLOURS, per_class=6)
    write_class_folders(tmp_path / "imgs" / "test", COLOURS, per_class=2, seed=1)
    dm = module(path=str(tmp_path / "imgs"), val_size=3)
    paths, labels = loaded_split(dm, "test")
    assert all("/test/" in str(p) for p in paths) and sorted(labels) == ["cat", "cat", "dog", "dog", "eel", "eel"]
    assert len(loaded_split(dm, "val")[0]) == 3 and len(loaded_split(dm, "train")[0]) == 15
    assert all("/train/" in str(p) for p in loaded_split(dm, "val")[0])


def write_manifest(folder: Path, kind: str, with_split: bool) -> Path:
    write_class_folders(folder / "images", COLOURS, per_class=6)
    rows = sorted(folder.glob("images/*/*.png"))
    table = pd.DataFrame({"file": [str(p.relative_to(folder)) for p in rows],
                          "kind": [p.parent.name for p in rows]})
    table.loc[0, "file"] = str(rows[0])  # an absolute path works too
    if with_split:
        table["split"] = ["test" if i % 6 == 0 else "val" if i % 6 == 1 else "train" for i in range(len(rows))]
    path = folder / {"csv": "list.csv", "csv.gz": "list.csv.gz", "parquet": "list.parquet"}[kind]
    if kind == "parquet":
        table.to_parquet(path)
    else:
        table.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("with_split", [True, False], ids=["split_column", "no_split_column"])
@pytest.mark.parametrize("kind", ["csv", "csv.gz", "parquet"])
def test_manifest_tables(tmp_path, kind, with_split):
    manifest = write_manifest(tmp_path, kind, with_split)
    dm = module(manifest=str(manifest), path_column="file", label_column="kind", classes=["eel", "dog", "cat"],
                val_size=3, test_size=3)
    assert dm.facts()["class_names"] == ["eel", "dog", "cat"]  # data.classes fixes the order
    sizes = [len(dm.splits()[s][0]) for s in ("train", "val", "test")]
    assert sizes == [12, 3, 3]
    paths, labels = loaded_split(dm, "train")
    assert all(p.is_file() and p.parent.name == y for p, y in zip(paths, labels))
    if with_split:  # the manifest's own splits: its rows 0 and 1 of every 6
        assert {int(p.stem) for p in loaded_split(dm, "test")[0]} == {0}
    dm.setup()
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.uint8 and targets.dtype == torch.int64


# -- formats and modes ---------------------------------------------------------------------------
def blocks(h: int = 32, w: int = 48) -> np.ndarray:
    """RGB blocks on JPEG's 16-pixel grid (so that compression keeps them): left red, right blue, a green top band."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 3] = (220, 20, 20)
    a[:, w // 3 :] = (20, 20, 220)
    a[: h // 2] = (20, 220, 20)
    return a


def away_from_edges(expected: np.ndarray) -> np.ndarray:
    """Pixels whose neighbours within 1 px share their colour: JPEG's chroma upsampling blurs block edges."""
    same = np.ones(expected.shape[:2], bool)
    padded = np.pad(expected, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = same.shape
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            same &= (padded[dy : dy + h, dx : dx + w] == expected).all(axis=2)
    return same


def grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


@pytest.mark.parametrize("case", ["png_rgb", "png_grey", "png_rgba", "png_16bit", "jpeg_cmyk", "webp", "bmp",
                                  "png_palette"])
@pytest.mark.parametrize("channels", [3, 1])
def test_every_format_and_mode_decodes(tmp_path, case, channels):
    rgb = blocks()
    exact = True
    if case == "png_rgb":
        Image.fromarray(rgb).save(path := tmp_path / "a.png")
    elif case == "png_grey":
        rgb = np.repeat(grey(rgb)[..., None], 3, axis=2)
        Image.fromarray(rgb[..., 0]).save(path := tmp_path / "a.png")
    elif case == "png_rgba":
        Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 90, np.uint8)])).save(path := tmp_path / "a.png")
    elif case == "png_16bit":
        wide = grey(rgb).astype(np.uint16) * 257  # 8-bit v -> 16-bit v * 257: scaling back gives v exactly
        Image.fromarray(wide).save(path := tmp_path / "a.png")
        assert Image.open(path).mode == "I;16"
        rgb = np.repeat(grey(rgb)[..., None], 3, axis=2)
    elif case == "jpeg_cmyk":
        Image.fromarray(rgb).convert("CMYK").save(path := tmp_path / "a.jpg", quality=95)
        assert Image.open(path).mode == "CMYK"
        exact = False
    elif case == "webp":
        Image.fromarray(rgb).save(path := tmp_path / "a.webp", lossless=True)
    elif case == "bmp":
        Image.fromarray(rgb).save(path := tmp_path / "a.bmp")
    else:
        Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(path := tmp_path / "a.png")
    image = decode(path, channels)
    assert image.dtype == torch.uint8 and image.shape == (channels, 32, 48)
    expected = torch.from_numpy(rgb).permute(2, 0, 1) if channels == 3 else torch.from_numpy(grey(rgb).copy())[None]
    error = (image.int() - expected.int()).abs().max().item()
    assert error <= (1 if exact else 12), error  # 1: greyscale conversions round differently


def test_exif_orientation_is_applied(tmp_path):
    rgb = blocks()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 90 degrees counter-clockwise: displayed after turning it clockwise
    Image.fromarray(rgb).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    image = decode(tmp_path / "turned.jpg", 3).permute(1, 2, 0).numpy().astype(int)
    expected = np.rot90(rgb, k=-1).astype(int)
    assert image.shape == expected.shape == (48, 32, 3)
    inside = away_from_edges(expected)
    assert inside.mean() > 0.8 and np.abs(image - expected)[inside].max() <= 12


# -- bad inputs: one line each --------------------------------------------------------------------
def preflight(args: list[str], cwd: Path) -> tuple[int, str]:
    """`lightdist preflight ...` in this process (no Hydra run, nothing trained): exit code and stderr."""
    from lightdist.main import main

    err = io.StringIO()
    code = 0
    with contextlib.chdir(cwd), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            main(["preflight", *args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, err.getvalue()


def bad_inputs(root: Path) -> dict[str, tuple[list[str], str]]:
    (root / "empty").mkdir(parents=True)
    write_class_folders(root / "one", {"cat": COLOURS["cat"]}, per_class=4)
    write_class_folders(root / "corrupt", COLOURS, per_class=4)
    (root / "corrupt" / "dog" / "broken.jpg").write_bytes(b"\x00not a jpeg at all" * 8)
    manifest = write_manifest(root / "table", "csv", with_split=False)
    folder = ["data=image_folder", "data.image_size=16"]
    table = ["data=image_table", f"data.manifest={manifest}", "data.path_column=file", "data.image_size=16"]
    return {
        "empty folder": ([*folder, f"data.path={root / 'empty'}"], f"{root / 'empty'} has no class folders"),
        "one class": ([*folder, f"data.path={root / 'one'}"], "of one class only ('cat')"),
        "corrupt jpeg": ([*folder, f"data.path={root / 'corrupt'}"],
                         f"image {root / 'corrupt' / 'dog' / 'broken.jpg'} is not a readable image"),
        "missing column": (table, "has no column 'label' (columns: 'file', 'kind')"),
        "no such folder": ([*folder, f"data.path={root / 'nowhere'}"], f"image folder {root / 'nowhere'} does not exist"),
        "no such manifest": (["data=image_table", f"data.manifest={root / 'nowhere.csv'}"], "does not exist"),
        "label outside data.classes": ([*table, "data.label_column=kind", "data.classes=[cat,dog]"],
                                       "has label(s) 'eel' that data.classes lacks"),
    }


def test_bad_inputs_are_one_line_each(tmp_path):
    cases = bad_inputs(tmp_path / "data")
    for name, (args, expected) in cases.items():
        code, err = preflight(args, tmp_path)
        lines = [line for line in err.splitlines() if line.startswith("lightdist: error:")]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, (name, err[-2000:])
        assert expected in lines[0], (name, lines[0])


def test_skip_corrupt_skips_and_counts(tmp_path, caplog):
    write_class_folders(tmp_path / "imgs", COLOURS, per_class=5)
    for name in ("a.jpg", "b.png"):
        (tmp_path / "imgs" / "eel" / name).write_bytes(b"garbage" * 10)
    with pytest.raises(DataError, match="2 more file|1 more file"):
        module(path=str(tmp_path / "imgs")).facts()
    dm = module(path=str(tmp_path / "imgs"), skip_corrupt=True, val_size=3, test_size=3)
    with caplog.at_level("WARNING"):
        dm.setup()
    assert dm.skipped_files == 2 and sum(len(dm.splits()[s][0]) for s in dm.splits()) == 15
    assert any("skipping 2 unreadable image file(s)" in r.getMessage() for r in caplog.records)
    # damaged after a good header: found only when decoded, then skipped in the batch
    good = tmp_path / "imgs" / "cat" / "0.png"
    good.write_bytes(good.read_bytes()[:60])
    dm.train_set.paths = [good] * 2 + [p for p in dm.train_set.paths if p != good][:3]
    images, labels = next(iter(dm._loader(dm.train_set, training=False)))
    assert len(images) == len(labels) == 2
    # without skip_corrupt: one line naming the file, raised in the main process even from a loader worker
    strict = module(path=str(tmp_path / "imgs"), skip_corrupt=True, num_workers=1, mean=[0.5] * 3, std=[0.5] * 3)
    strict.setup()
    strict.train_set.paths, strict.train_set.skip_corrupt = dm.train_set.paths, False
    batch = next(iter(strict._loader(strict.train_set, training=False)))
    with pytest.raises(DataError, match=f"image {good} cannot be decoded") as caught:
        strict.on_before_batch_transfer(batch, 0)
    assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)


def test_bad_values_are_refused():
    with pytest.raises(ConfigError, match="one of the two"):
        ImageFilesDataModule()
    with pytest.raises(ConfigError, match="data.mean and data.std need 3"):
        ImageFilesDataModule(path="x", mean=[0.5], std=[0.5])


# -- normalisation --------------------------------------------------------------------------------
def test_statistics_dataset_backbone_given_and_saved(tmp_path):
    write_class_folders(tmp_path / "imgs", COLOURS, per_class=4, noise=0)
    dm = module(path=str(tmp_path / "imgs"), stats_file=str(tmp_path / "stats.json"), crop_fraction=1.0)
    dm.setup()
    # every image is one flat colour: the statistics are those of the 3 colours, 4 images each (train: 10 of 12)
    assert json.loads((tmp_path / "stats.json").read_text())["mean"] == pytest.approx(dm.mean.flatten().tolist())
    assert dm.statistics == "dataset" and torch.all(dm.mean > 0.1) and torch.all(dm.std > 0.05)
    assert dm.use_statistics([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])  # data.normalize=auto
    assert dm.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    x = dm.normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert x[0, :, 0, 0].tolist() == pytest.approx([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225],
                                                   rel=1e-5)
    given = module(path=str(tmp_path / "imgs"), mean=[0.5] * 3, std=[0.25] * 3)
    assert not given.use_statistics([0.1] * 3, [0.2] * 3) and given.statistics == "given"
    assert not module(path=str(tmp_path / "imgs"), normalize="dataset").use_statistics([0.1] * 3, [0.2] * 3)
    grey = module(path=str(tmp_path / "imgs"), channels=1)
    assert grey.use_statistics([0.4, 0.5, 0.6], [0.2, 0.2, 0.2]) and grey.mean.flatten().tolist() == [pytest.approx(0.5)]
    # a restored module keeps the run's statistics and class names, without reading the images
    restored = module(path=str(tmp_path / "nowhere"))
    restored.load_state_dict(dm.state_dict())
    assert restored.facts()["class_names"] == ["cat", "dog", "eel"]
    assert restored.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])


# -- MixUp / CutMix and soft-target losses ---------------------------------------------------------
@pytest.mark.parametrize("mix", [{"mixup_alpha": 0.4}, {"cutmix_alpha": 1.0}, {"mixup_alpha": 0.2, "cutmix_alpha": 1.0}])
def test_mixing_gives_soft_targets_that_sum_to_one(tmp_path, mix):
    from lightdist.vision.transforms import batch_mixing

    torch.manual_seed(0)
    mixing = batch_mixing(5, **{"mixup_alpha": 0.0, "cutmix_alpha": 0.0, **mix})
    images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    mixed, targets = mixing(images, labels)
    assert mixed.shape == images.shape and targets.shape == (8, 5) and targets.dtype == torch.float32
    assert torch.allclose(targets.sum(1), torch.ones(8)) and (targets >= 0).all()
    assert batch_mixing(5) is None


def test_soft_target_loss_equals_the_index_loss_for_one_hot_targets():
    from lightdist.tasks.classification import ClassificationTask
    from lightdist.vision.models.cnn import SimpleCNN

    task = ClassificationTask(SimpleCNN(3, 4, 16), 4, torch.optim.SGD, label_smoothing=0.1).double()
    logits = torch.randn(6, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    one_hot = torch.nn.functional.one_hot(labels, 4).double()
    soft, index = task.criterion(logits, one_hot), task.criterion(logits, labels)
    assert soft.dtype == torch.float64 and abs(soft.item() - index.item()) < 1e-12
    assert abs(task.criterion(logits, 0.5 * one_hot + 0.5 * one_hot.roll(1, 0)).item() - index.item()) > 1e-3
    # a training step on mixed targets logs the accuracy of their most likely class
    logged = {}
    task.log = lambda name, value, **kwargs: logged.update({name: value})
    task.eval()  # the same predictions in the step and below (no dropout)
    batch = (torch.randn(6, 3, 16, 16, dtype=torch.float64), 0.7 * one_hot + 0.3 * one_hot.roll(1, 0))
    loss = task.training_step(batch, 0)
    predicted = task(batch[0]).argmax(-1)
    assert torch.isfinite(loss) and logged["train/acc"].item() == (predicted == labels).float().mean().item()


# -- end to end ------------------------------------------------------------------------------------
def test_cli_run_keeps_class_names_in_checkpoint_and_eval_report(workdir):
    data = workdir / "imgs"
    write_class_folders(data, COLOURS, per_class=8)
    run_cli(["data=image_folder", f"data.path={data}", "data.image_size=16", "data.batch_size=8", "data.test_size=3",
             "data.mixup_alpha=0.2", "model=simple_cnn", "trainer.max_steps=3", "trainer.max_epochs=1", *QUIET],
            cwd=workdir, timeout=240)
    (run_dir,) = run_dirs(workdir)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["class_names"] == ["cat", "dog", "eel"]
    assert checkpoint["ImageFilesDataModule"]["class_names"] == ["cat", "dog", "eel"]
    assert len(checkpoint["ImageFilesDataModule"]["mean"]) == 3
    run_cli(["eval", f"run_dir={run_dir}"], cwd=workdir, timeout=240)
    (report,) = (run_dir / "eval").glob("*/report.json")
    report = json.loads(report.read_text())
    assert report["confusion_matrix"]["labels"] == ["cat", "dog", "eel"]
    assert [c["label"] for c in report["per_class"]] == ["cat", "dog", "eel"] and report["num_samples"] == 3


def test_eval_under_ddp_sees_every_image_once_and_loader_options_apply(tmp_path):
    from types import SimpleNamespace

    write_class_folders(tmp_path / "imgs", COLOURS, per_class=5)
    seen = []
    for rank in (0, 1):
        dm = module(path=str(tmp_path / "imgs"), test_size=7, eval_batch_size=2, num_workers=1, prefetch_factor=3)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        dm.setup()
        loader = dm.eval_dataloader("test")
        assert loader.prefetch_factor == 3 and loader.num_workers == 1
        seen += [dm.test_set.paths[i] for i in loader.sampler]
    assert sorted(seen) == sorted(dm.test_set.paths) and len(seen) == 7  # 7 over 2 ranks: no padding


def test_batch_decoding_outside_the_workers_matches_worker_decoding(tmp_path):
    """data.decode_device: JPEGs travel as bytes and are decoded a batch at a time (here on the CPU, the
    code path nvJPEG takes on a GPU); PNGs in the same batch are decoded by the workers as usual."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(4):
            pixels = rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.{'png' if i == 3 else 'jpg'}")
    paths = sorted(tmp_path.glob("*/*"))
    labels = [0 if p.parent.name == "a" else 1 for p in paths]
    preset = T.eval_transform(24)
    as_workers = collate_images([ImageFiles(paths, labels, 3, preset)[i] for i in range(len(paths))])
    as_bytes = collate_images([ImageFiles(paths, labels, 3, preset, encoded=True)[i] for i in range(len(paths))])
    assert isinstance(as_bytes[0], list) and sum(isinstance(x, Encoded) for x in as_bytes[0]) == 6  # 2 PNGs decoded
    batched = decode_batch(as_bytes[0], 3, "cpu", preset)
    assert batched.dtype == torch.uint8 and batched.shape == as_workers[0].shape == (8, 3, 24, 24)
    assert torch.equal(as_workers[0], batched)  # same decoder, same preset: the same pixels
    assert torch.equal(as_workers[1], as_bytes[1])
    # the data module decodes such batches before the transfer, with the split's preset
    dm = ImageFilesDataModule(path=str(tmp_path), val_size=0.5, test_size=0.25, image_size=24, decode_device="cpu",
                              batch_size=4, eval_batch_size=8, normalize="none")
    dm.setup("fit")
    images, _ = dm.on_before_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 24, 24)


def test_decode_device_is_checked():
    with pytest.raises(ConfigError, match="decode_device"):
        module(path="/nonexistent", decode_device="tpu")
