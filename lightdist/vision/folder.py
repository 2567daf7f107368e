"""Users' own images: a folder of class folders (data=image_folder) or a manifest table (data=image_table).

Images are decoded and transformed (torchvision.transforms.v2 presets) in the loader and stay
uint8 on the way to the device; conversion to float, normalisation and MixUp/CutMix happen on
the device in on_after_batch_transfer, as for the canonical datasets (lightdist.vision.data).
"""

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightdist.data.base import ClassificationDataModule
from lightdist.data.splits import balanced_subsets, holdout_count, pick, stratified_split
from lightdist.errors import ConfigError, DataError
from lightdist.vision import transforms as T
from lightdist.vision.augment import ResizedCropFlip
from lightdist.vision.files import (
    ImageFiles,
    LabelledImages,
    Unreadable,
    collate_images,
    decode,
    decode_batch,
    is_readable,
    read_manifest,
    scan_folder,
)
from lightdist.vision.on_device import OnDevice, check_fits, run_device

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def _class_order(labels: set[str]) -> list[str]:
    """Numeric labels in numeric order ('2' before '10'), names alphabetically."""
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


class ImageFilesDataModule(OnDevice, ClassificationDataModule):
    """Images from `path` (class folders, or train/ val/ test/ of class folders) or from `manifest`
    (CSV, CSV.gz or Parquet: path, label and optional split columns); exactly one of the two.

    facts(): num_classes, class_names (folder names sorted, or data.classes), in_channels
    (data.channels), image_size. Splits the source lacks are drawn from its training images
    (seeded, stratified: data.val_size, data.test_size).

    Normalisation (data.normalize): `auto` uses the statistics a pretrained backbone hands over
    through use_statistics(), else the training split's own; `dataset` always the training
    split's own; `none` only scales to [0, 1]. data.mean and data.std, when given, win over all.
    The statistics in use, and the class names, travel with checkpoints (state_dict).
    """

    FACTS = ("num_classes", "in_channels", "image_size", "class_names")
    PREFLIGHT_FACTS = True

    def __init__(
        self,
        path: str | None = None,
        manifest: str | None = None,
        path_column: str = "path",
        label_column: str = "label",
        split_column: str | None = "split",
        classes: list[str] | None = None,
        channels: Literal[1, 3] = 3,
        image_size: int = 224,
        crop_fraction: float = 0.875,
        crop_scale: list[float] | tuple[float, float] = (0.08, 1.0),
        horizontal_flip: bool = True,
        auto_augment: Literal["randaugment", "trivialaugment"] | None = None,
        random_erasing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        normalize: Literal["auto", "dataset", "none"] = "auto",
        mean: list[float] | None = None,
        std: list[float] | None = None,
        stats_samples: int = 1000,
        stats_file: str | None = None,
        val_size: int | float = 0.1,
        test_size: int | float = 0.1,
        split_seed: int = 0,
        train_subset: int | None = None,
        val_subset: int | None = None,
        test_subset: int | None = None,
        verify_files: bool = True,
        skip_corrupt: bool = False,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
        decode_device: str | None = None,
        on_device: bool = False,
    ):
        super().__init__(batch_size, eval_batch_size, shuffle, drop_last, num_workers, pin_memory,
                         persistent_workers, prefetch_factor)
        if (path is None) == (manifest is None):
            raise ConfigError("give the images as data.path (a folder) or data.manifest (a table), one of the two",
                              hint="data=image_folder data.path=<dir>, or data=image_table data.manifest=<file>")
        if image_size < 8:
            raise ConfigError(f"data.image_size={image_size} is too small", hint="use 8 pixels or more")
        if not 0 < crop_fraction <= 1:
            raise ConfigError(f"data.crop_fraction={crop_fraction} is outside (0, 1]", hint="e.g. 0.875")
        if (mean is None) != (std is None) or (mean is not None and not len(mean) == len(std) == channels):
            raise ConfigError(f"data.mean and data.std need {channels} value(s) each (data.channels={channels})",
                              hint="give both, one per channel, in [0, 1] units, or neither")
        if decode_device not in (None, "cpu", "cuda", "gpu"):
            raise ConfigError(f"data.decode_device={decode_device!r} is not a device for decoding",
                              hint="null (in the loader workers), cpu or cuda")
        if on_device and (auto_augment or random_erasing > 0):
            raise ConfigError("data.auto_augment and data.random_erasing run per image in the loader, which "
                              "data.on_device=true does without",
                              hint="set data.auto_augment=null and data.random_erasing=0 (crops, flips and "
                                   "mixup/cutmix run on the device), or data.on_device=false")
        # every split decoded once (evaluation preset) and kept on the run's device; training crops and
        # flips of those images happen there (lightdist.vision.on_device)
        self.on_device = on_device
        self.device_augment = ResizedCropFlip(image_size, tuple(crop_scale), horizontal_flip) if on_device else None
        # JPEG decoding out of the workers, a batch at a time on this device ("gpu" for the trainer's GPU)
        self.decode_device = "cuda" if decode_device == "gpu" else decode_device
        self.path = Path(path).expanduser() if path is not None else None
        self.manifest = Path(manifest).expanduser() if manifest is not None else None
        self.columns = (path_column, label_column, split_column)
        self.classes = [str(c) for c in classes] if classes else None
        self.channels = channels
        self.image_size = image_size
        self.train_transform = T.train_transform(image_size, tuple(crop_scale), horizontal_flip, auto_augment,
                                                 random_erasing)
        self.eval_transform = T.eval_transform(image_size, crop_fraction)
        self.mix_alphas = (mixup_alpha, cutmix_alpha)
        self.mix = None
        self.normalization = normalize
        self.stats_samples = stats_samples
        self.stats_file = Path(stats_file) if stats_file else None
        self.sizes = {"val": val_size, "test": test_size}
        self.split_seed = split_seed
        self.subsets = {"train": train_subset, "val": val_subset, "test": test_subset}
        self.verify_files = verify_files
        self.skip_corrupt = skip_corrupt
        self.class_names: list[str] | None = None
        self.skipped_files = 0
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.statistics = "none"  # where mean/std come from: given, backbone, dataset, checkpoint or none
        if mean is not None:
            self._set_statistics(mean, std, "given")
        self._splits: dict[str, tuple[list[Path], np.ndarray]] | None = None

    # -- the images and their splits ---------------------------------------------------------------
    def _where(self) -> str:
        return str(self.path if self.path is not None else self.manifest)

    def _read_source(self) -> dict[str, LabelledImages]:
        if self.path is not None:
            return scan_folder(self.path)
        return read_manifest(self.manifest, *self.columns)

    def _drop_unreadable(self, raw: dict[str, LabelledImages]) -> dict[str, LabelledImages]:
        bad = [p for images in raw.values() for p in images.paths if not is_readable(p)]
        if not bad:
            return raw
        if not self.skip_corrupt:
            raise DataError(f"image {bad[0]} is not a readable image"
                            + (f" ({len(bad) - 1} more file(s) neither)" if len(bad) > 1 else ""),
                            hint="replace or delete it, or set data.skip_corrupt=true to skip such files")
        self.skipped_files = len(bad)
        log.warning("skipping %d unreadable image file(s) of %s, the first %s", len(bad), self._where(), bad[0])
        drop = set(bad)
        return {split: images.select(lambda p: p not in drop) for split, images in raw.items()}

    def splits(self) -> dict[str, tuple[list[Path], np.ndarray]]:
        """{split: (paths, label indices)}, read once; seeded stratified val/test where the source has none."""
        if self._splits is not None:
            return self._splits
        raw = self._read_source()
        if self.verify_files:
            raw = self._drop_unreadable(raw)
        where = self._where()
        train_labels = set(raw["train"].labels)
        if not train_labels:
            raise DataError(f"{where} holds no readable training images", hint="point the data config at your images")
        names = self.classes or _class_order(train_labels)
        if len(train_labels) < 2:
            raise DataError(f"{where}: the training images are of one class only ({names[0]!r})",
                            hint="a classifier needs at least two classes: one folder (or label) per class")
        index = {name: i for i, name in enumerate(names)}
        paths, labels = {}, {}
        for split, images in raw.items():
            unknown = sorted(set(images.labels) - set(index))
            if unknown:
                known = "data.classes" if self.classes else "the training split"
                raise DataError(f"{where}: the {split} split has label(s) {', '.join(map(repr, unknown[:5]))} that "
                                f"{known} lacks", hint="add them to data.classes" if self.classes
                                else "every class needs training images")
            paths[split] = list(images.paths)
            labels[split] = np.array([index[y] for y in images.labels], dtype=np.int64)
        total = len(paths["train"])  # fractions are of all training images, counts absolute
        for split in ("test", "val"):
            if split in paths:
                continue
            count = holdout_count(self.sizes[split], total, f"data.{split}_size")
            if count >= len(paths["train"]):
                raise ConfigError(f"data.{split}_size={self.sizes[split]} leaves no training images of {total}",
                                  hint="hold out fewer images")
            keep, held = stratified_split(labels["train"], count, self.split_seed)
            paths[split], labels[split] = pick(paths["train"], labels["train"], held)
            paths["train"], labels["train"] = pick(paths["train"], labels["train"], keep)
        out = balanced_subsets({s: (paths[s], labels[s]) for s in SPLITS}, self.subsets, self.split_seed)
        self.class_names = list(names)
        self._splits = out
        return out

    # -- what the rest of lightdist asks -------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        if self.class_names is None:  # a module restored from a checkpoint knows them without the files
            self.splits()
        return {"num_classes": len(self.class_names), "in_channels": self.channels, "image_size": self.image_size,
                "class_names": list(self.class_names)}

    def check_available(self) -> None:
        self.splits()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        splits = self.splits()
        (train_paths, train_labels), (val_paths, val_labels), (test_paths, test_labels) = (splits[s] for s in SPLITS)
        trainer = self.trainer
        if trainer is not None and len(train_paths) < trainer.world_size:
            raise DataError(f"{len(train_paths)} training images cannot feed {trainer.world_size} ranks",
                            hint="use more images or fewer devices")
        if self.mean is None and self.normalization != "none":
            self._dataset_statistics(train_paths)
        if self.on_device:
            self._decode_to_device({"train": (train_paths, train_labels), "val": (val_paths, val_labels),
                                    "test": (test_paths, test_labels)})
            self.mix = T.batch_mixing(len(self.class_names), *self.mix_alphas)
            return
        encoded = self.decode_device is not None
        self.train_set = ImageFiles(train_paths, train_labels, self.channels, self.train_transform, self.skip_corrupt,
                                    encoded)
        self.val_set = ImageFiles(val_paths, val_labels, self.channels, self.eval_transform, self.skip_corrupt, encoded)
        self.test_set = ImageFiles(test_paths, test_labels, self.channels, self.eval_transform, self.skip_corrupt,
                                   encoded)
        self.mix = T.batch_mixing(len(self.class_names), *self.mix_alphas)

    def _decode_to_device(self, splits: dict[str, tuple[list[Path], np.ndarray]]) -> None:
        """Each split decoded once through the evaluation preset (loader workers, if any) into uint8
        N x C x S x S on the run's device."""
        from torch.utils.data import DataLoader, TensorDataset

        device = run_device(self)
        count = sum(len(paths) for paths, _ in splits.values())
        check_fits(count * self.channels * self.image_size ** 2, device,
                   f"{count} images of {self.image_size}x{self.image_size}")
        for split, (paths, labels) in splits.items():
            files = ImageFiles(paths, labels, self.channels, self.eval_transform, self.skip_corrupt)
            images, targets = [], []
            for batch in DataLoader(files, batch_size=256, num_workers=self.num_workers, collate_fn=collate_images):
                if isinstance(batch, Unreadable):
                    raise DataError(batch.message, hint="replace or delete the file, or set data.skip_corrupt=true "
                                                        "to skip such files")
                images.append(batch[0].to(device))
                targets.append(batch[1].to(device))
            empty = torch.empty(0, self.channels, self.image_size, self.image_size, dtype=torch.uint8, device=device)
            setattr(self, f"{split}_set", TensorDataset(torch.cat(images) if images else empty,
                                                        torch.cat(targets) if targets else empty.new_empty(0).long()))

    # -- normalisation -------------------------------------------------------------------------------
    def use_statistics(self, mean: list[float], std: list[float]) -> bool:
        """Normalise with these per-channel statistics (in [0, 1] units), e.g. a pretrained backbone's.

        Called by whoever builds a pretrained model, before fit; applied only with data.normalize=auto and
        no data.mean/data.std given (returns whether they were applied). Three values are averaged to one
        for greyscale data (data.channels=1).
        """
        if self.normalization != "auto" or self.statistics in ("given", "checkpoint"):
            return False
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        if self.channels == 1 and len(mean) == 3:
            mean, std = [sum(mean) / 3], [sum(std) / 3]
        if len(mean) != self.channels or len(std) != self.channels:
            raise ConfigError(f"the backbone's statistics have {len(mean)} channel(s), the data {self.channels}",
                              hint=f"set data.channels={len(mean)}, or data.normalize=dataset")
        self._set_statistics(mean, std, "backbone")
        return True

    def _set_statistics(self, mean, std, source: str) -> None:
        self.mean = torch.tensor([float(v) for v in mean], dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor([float(v) for v in std], dtype=torch.float32).view(1, -1, 1, 1).clamp_min(1e-6)
        self.statistics = source

    def _dataset_statistics(self, train_paths: list[Path]) -> None:
        """The training split's statistics on a seeded sample (the same on every rank), after the evaluation
        preset; kept in data.stats_file when set, so a resumed run or a later rank reads instead of decoding."""
        if self.stats_file is not None and self.stats_file.is_file():
            saved = json.loads(self.stats_file.read_text())
            if len(saved["mean"]) == self.channels:
                self._set_statistics(saved["mean"], saved["std"], "dataset")
                return
        rng = np.random.default_rng(self.split_seed)
        sample = rng.permutation(len(train_paths))[: self.stats_samples]
        images = []
        for i in sample:
            try:
                images.append(self.eval_transform(decode(train_paths[i], self.channels)))
            except DataError:
                if not self.skip_corrupt:
                    raise
        if not images:
            raise DataError(f"no training image of {self._where()} could be decoded", hint="check the image files")
        mean, std = T.channel_statistics(images)
        self._set_statistics(mean, std, "dataset")
        if self.stats_file is not None and rank_zero_only.rank == 0:
            self.stats_file.parent.mkdir(parents=True, exist_ok=True)
            partial = self.stats_file.with_suffix(".partial")
            partial.write_text(json.dumps({"mean": mean, "std": std, "samples": len(images)}))
            os.replace(partial, self.stats_file)  # atomic: a rank starting now never reads half a file

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> float, normalised, on whatever device the images are."""
        x = images.float().div_(255.0)
        if self.mean is None:
            return x
        if self.mean.device != x.device:  # once: a copy from host memory makes the host wait for the GPU
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return (x - self.mean) / self.std

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, Unreadable):  # a file that failed to decode in a loader worker
            raise DataError(batch.message, hint="replace or delete the file, or set data.skip_corrupt=true to skip "
                                                "such files")
        images, labels = batch
        if isinstance(images, list):  # JPEG bytes (data.decode_device): decoded here, before the transfer
            training = self.trainer is not None and self.trainer.training
            device = self.decode_device
            if device == "cuda" and self.trainer is not None:
                device = self.trainer.strategy.root_device  # this rank's GPU
            images = decode_batch(images, self.channels, device,
                                  self.train_transform if training else self.eval_transform)
        return images, labels

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        x = self.normalize(images)
        if self.trainer is not None:
            if self.device_augment is not None and self.trainer.training:
                x = self.device_augment(x)  # data.on_device: the crops and flips the loader would have made
            if self.mix is not None and self.trainer.training:
                x, labels = self.mix(x, labels)  # labels become soft targets, N x num_classes
            # Lightning casts inputs for the precision before the transfer, when they were still uint8.
            x = self.trainer.precision_plugin.convert_input(x)
        return x, labels

    # -- class names and statistics travel with checkpoints ------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"class_names": list(self.class_names or [])}
        if self.mean is not None:
            state.update(mean=self.mean.flatten().tolist(), std=self.std.flatten().tolist())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("class_names"):
            self.class_names = list(state["class_names"])
        if "mean" in state and self.statistics != "given":
            if len(state["mean"]) != self.channels:
                raise DataError(f"the checkpoint's normalisation has {len(state['mean'])} channel(s), the data "
                                f"{self.channels}", hint="use the run's own data.channels")
            self._set_statistics(state["mean"], state["std"], "checkpoint")

    def encode_inputs(self, raw: list) -> tuple:
        """Image files (decoded as in training), arrays or tensors -> a normalised batch `(images,)`."""
        from lightdist.vision.images import to_chw_uint8

        def one(item) -> torch.Tensor:
            if isinstance(item, (str, Path)) and Path(item).suffix.lower() != ".npy":
                return self.eval_transform(decode(Path(item).expanduser(), self.channels))
            return to_chw_uint8(item, self.channels, self.image_size)

        return (self.normalize(torch.stack([one(x) for x in raw])),)

    # -- loaders -------------------------------------------------------------------------------------
    def collate_fn(self):
        return collate_images
