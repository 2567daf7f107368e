"""Users' image files: scanning class folders and manifests, checking and decoding the images.

Every problem with the files (a missing folder or column, one class only, an unreadable image)
is a DataError naming the file or folder and the fix. Files are only read.
"""

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset, default_collate
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file
from torchvision.transforms.v2.functional import rgb_to_grayscale

from lightdist.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
JPEG_SUFFIXES = (".jpg", ".jpeg")
SPLITS = ("train", "val", "test")
# torchvision.io decodes JPEG, PNG, WebP (and GIF) only; these go through Pillow.
_PIL_SUFFIXES = (".bmp",)


@dataclass
class LabelledImages:
    paths: list[Path] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, keep: Callable[[Path], bool]) -> "LabelledImages":
        pairs = [(p, y) for p, y in zip(self.paths, self.labels) if keep(p)]
        return LabelledImages([p for p, _ in pairs], [y for _, y in pairs])


# -- folders ------------------------------------------------------------------------------------
def scan_folder(path: Path) -> dict[str, LabelledImages]:
    """{split: images} of `path`: class folders directly ({"train": ...}), or train/ [val/] [test/]
    folders each holding class folders. Hidden entries and files of other types are ignored."""
    if not path.is_dir():
        raise DataError(f"image folder {path} does not exist",
                        hint="set data.path to a folder of class folders (or of train/, val/, test/)")
    subdirs = {p.name for p in _subfolders(path)}
    if "train" in subdirs and subdirs <= set(SPLITS):
        return {split: _scan_classes(path / split) for split in SPLITS if split in subdirs}
    return {"train": _scan_classes(path)}


def _subfolders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_classes(folder: Path) -> LabelledImages:
    out = LabelledImages()
    classes = _subfolders(folder)
    if not classes:
        raise DataError(f"{folder} has no class folders", hint="put the images of each class in a folder named after it")
    for class_dir in classes:
        files = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(class_dir).parts) and p.is_file())
        out.paths += files
        out.labels += [class_dir.name] * len(files)
    if not out.paths:
        raise DataError(f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} images in its class folders",
                        hint="put the images in one folder per class")
    return out


# -- manifests ----------------------------------------------------------------------------------
def read_manifest(manifest: Path, path_column: str, label_column: str, split_column: str | None
                  ) -> dict[str, LabelledImages]:
    """{split: images} of a CSV (.csv, .csv.gz, ...) or Parquet manifest; one "train" split when it has no
    split column. Paths are taken relative to the manifest's folder unless absolute."""
    import pandas as pd

    if not manifest.is_file():
        raise DataError(f"manifest {manifest} does not exist", hint="set data.manifest to a CSV or Parquet file")
    try:
        if ".parquet" in manifest.suffixes or manifest.suffix.lower() == ".pq":
            table = pd.read_parquet(manifest)
        else:  # pandas infers .gz/.bz2/.zip/.xz compression from the name
            table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"manifest {manifest} cannot be read ({type(exc).__name__}: {exc})",
                        hint="a CSV with a header row, or a Parquet file") from exc
    columns = [str(c) for c in table.columns]
    for key, column in (("path_column", path_column), ("label_column", label_column)):
        if column not in columns:
            raise DataError(f"manifest {manifest} has no column {column!r} (columns: {', '.join(map(repr, columns))})",
                            hint=f"set data.{key} to one of its columns")
    use_split = split_column is not None and split_column in columns
    out: dict[str, LabelledImages] = {}
    for row, (path, label, split) in enumerate(zip(
            table[path_column], table[label_column], table[split_column] if use_split else ["train"] * len(table))):
        label = "" if label is None else str(label).strip()
        if not str(path or "").strip() or not label:
            raise DataError(f"manifest {manifest}: row {row + 1} has an empty path or label", hint="fix or remove that row")
        split = {"valid": "val", "validation": "val"}.get(str(split).strip().lower(), str(split).strip().lower())
        if split not in SPLITS:
            raise DataError(f"manifest {manifest}: row {row + 1} has split {split!r}",
                            hint=f"column {split_column!r} takes train, val or test")
        image = Path(str(path).strip()).expanduser()
        out.setdefault(split, LabelledImages()).paths.append(image if image.is_absolute() else manifest.parent / image)
        out[split].labels.append(label)
    if "train" not in out:
        raise DataError(f"manifest {manifest} has no training rows", hint="give it rows, with split train where it has a split column")
    for images in out.values():
        missing = [p for p in images.paths if not p.is_file()]
        if missing:
            raise DataError(f"manifest {manifest}: {len(missing)} image(s) do not exist, the first {missing[0]}",
                            hint="paths are relative to the manifest's folder, or absolute")
    return out


# -- checking and decoding ----------------------------------------------------------------------
def is_readable(path: Path) -> bool:
    """Whether Pillow recognises the file as an image from its header.

    A cheap check of every file before training (no pixels decoded: about 50 us a file), so that
    a broken file is named at the start instead of hours in; a file that is damaged after a good
    header is still caught when it is decoded.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 - parsing the header is the check
        return True
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return False


def decode(path: Path, channels: int) -> torch.Tensor:
    """The image at `path` as uint8 channels x H x W, EXIF orientation applied; 16-bit images scaled to 8 bits."""
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    try:
        if path.suffix.lower() in _PIL_SUFFIXES:
            image = _decode_pil(path, channels)
        else:
            try:
                with _torchvision_io():
                    image = decode_image(read_file(str(path)), mode=mode, apply_exif_orientation=True)
            except RuntimeError:
                # torchvision.io refuses some valid files (unusual PNG/JPEG modes); Pillow reads more.
                image = _decode_pil(path, channels)
    except (OSError, RuntimeError, ValueError, SyntaxError) as exc:
        raise DataError(f"image {path} cannot be decoded ({exc})".replace("\n", " "),
                        hint="replace or delete the file, or set data.skip_corrupt=true to skip such files") from exc
    if image.dtype == torch.uint16:  # 16-bit PNG: 0..65535 -> 0..255, rounded
        image = ((image.to(torch.int32) * 255 + 32767) // 65535).to(torch.uint8)
    return _with_channels(image, channels)


def _with_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """`image` with `channels` channels: some decoders ignore the requested mode (torchvision's WebP, GRAY)."""
    if image.shape[0] == channels:
        return image
    return rgb_to_grayscale(image) if channels == 1 else image[:1].expand(3, -1, -1).contiguous()


@contextlib.contextmanager
def _torchvision_io() -> Iterator[None]:
    # torchvision 0.29 announces that TorchCodec will take over image decoding; until it is a
    # dependency here, torchvision.io is the decoder, and the notice would come per image.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision",
                                DeprecationWarning)
        yield


def _decode_pil(path: Path, channels: int) -> torch.Tensor:
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        if image.mode.startswith("I"):  # 16/32-bit integer greyscale: scale, as convert("L") would clip
            wide = np.asarray(image, dtype=np.int64)
            top = 65535 if image.mode.startswith("I;16") or wide.max() <= 65535 else int(wide.max())
            grey = torch.from_numpy(((wide * 255 + top // 2) // max(top, 1)).astype(np.uint8))
            image_t = grey.unsqueeze(0)
            return image_t if channels == 1 else image_t.expand(3, -1, -1).contiguous()
        array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class Unreadable:
    """Stands for a sample, or a batch, whose image failed to decode.

    Loader workers hand it to the main process (ImageFilesDataModule.on_before_batch_transfer
    raises the DataError there): an exception raised inside a worker reaches the main process
    as a new exception whose message is the worker's whole traceback, not one line.
    """

    message: str


class ImageFiles(Dataset):
    """(image, label index) pairs decoded on demand (in loader workers), through `transform` (uint8 in, uint8 out).

    An image that fails to decode gives an Unreadable in its place, or None with skip_corrupt;
    `collate_images` turns those into a batch.
    """

    def __init__(self, paths: list[Path], labels, channels: int, transform: Callable | None = None,
                 skip_corrupt: bool = False, encoded: bool = False):
        self.encoded = encoded  # JPEG files as their bytes (Encoded), for decode_batch
        self.paths = list(paths)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.channels = channels
        self.transform = transform
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        if self.encoded and self.paths[i].suffix.lower() in JPEG_SUFFIXES:
            # decoded later, a batch at a time, where data.decode_device says (decode_batch)
            return Encoded(read_file(str(self.paths[i])), self.paths[i]), self.labels[i]
        try:
            image = decode(self.paths[i], self.channels)
        except DataError as exc:
            if not self.skip_corrupt:
                return Unreadable(exc.message)
            log.warning("skipping %s", exc.message)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[i]


def collate_images(samples: list):
    """default_collate of the decoded samples: the first Unreadable instead when there is one; skipped
    samples (None, data.skip_corrupt) left out. Batches holding Encoded JPEGs keep their images as a
    list (sizes differ until decoded)."""
    for sample in samples:
        if isinstance(sample, Unreadable):
            return sample
    kept = [s for s in samples if s is not None]
    if not kept:
        return Unreadable(f"none of the {len(samples)} images of a batch could be decoded")
    if any(isinstance(image, Encoded) for image, _ in kept):
        return [image for image, _ in kept], default_collate([label for _, label in kept])
    return default_collate(kept)


@dataclass(frozen=True)
class Encoded:
    """A JPEG file's bytes (uint8, 1-D), decoded with its batch by decode_batch."""

    data: torch.Tensor
    path: Path


def decode_batch(images: list, channels: int, device: str | torch.device, transform: Callable | None) -> torch.Tensor:
    """A batch of Encoded JPEGs (and images already decoded in the workers) -> uint8 N x C x H x W on `device`.

    torchvision's decode_jpeg takes the whole list at once: on "cuda" that is nvJPEG, which frees the
    loader workers from the decoding that dominates their time at ImageNet sizes (they only read files).
    The per-image preset (random crops differ per image) then runs on the decoded tensors where they are.
    A JPEG the batched decoder refuses (CMYK on some GPUs, a damaged file) is decoded alone as in the workers.
    """
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    encoded = [i for i, image in enumerate(images) if isinstance(image, Encoded)]
    out: list[torch.Tensor | None] = [None if isinstance(image, Encoded) else image.to(device) for image in images]
    try:
        with _torchvision_io():
            decoded = decode_jpeg([images[i].data for i in encoded], mode=mode, device=device,
                                  apply_exif_orientation=True)
    except RuntimeError:
        decoded = [decode(images[i].path, channels).to(device) for i in encoded]
    for i, image in zip(encoded, decoded):
        image = _with_channels(image, channels)
        out[i] = transform(image) if transform is not None else image
    return torch.stack(out)
