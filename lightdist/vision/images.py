"""Raw images for prediction -> uint8 tensors of the shape a run was trained on.

Accepts image files (PNG, JPEG, ... through Pillow), `.npy` arrays, numpy arrays and
torch tensors. Arrays are HxW, HxWxC or CxHxW; uint8 values are 0-255, floating-point
values are taken as 0-1. Colour is converted to the run's channel count (grey <-> RGB)
and the image resized to the run's square size, so that the data module's own
normalisation (its training statistics) applies unchanged.
"""

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lightdist.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def read_image(path: str | Path, channels: int) -> np.ndarray:
    """An image file or a .npy array as an array (HxW, HxWxC or CxHxW)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"image {path} does not exist")
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    try:
        from PIL import Image
    except ImportError as exc:  # Pillow comes with matplotlib; without it only arrays can be read
        raise DataError(f"reading {path.name} needs Pillow", hint="pip install pillow, or pass .npy arrays") from exc
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except OSError as exc:
        raise DataError(f"{path} is not a readable image ({exc})") from exc


def to_chw_uint8(raw: Any, channels: int, size: int) -> torch.Tensor:
    """One image (path, array or tensor) -> a uint8 tensor channels x size x size."""
    if isinstance(raw, (str, Path)):
        raw = read_image(raw, channels)
    x = torch.as_tensor(np.asarray(raw)) if not isinstance(raw, torch.Tensor) else raw.detach().cpu()
    if x.ndim == 2:
        x = x.unsqueeze(0)
    elif x.ndim == 3 and x.shape[0] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = x.permute(2, 0, 1)  # HxWxC -> CxHxW
    if x.ndim != 3 or x.shape[0] not in (1, 3, 4):
        raise DataError(f"an image must be HxW, HxWxC or CxHxW with 1, 3 or 4 channels, got shape {tuple(x.shape)}")
    x = x.float() if x.is_floating_point() else x.float() / 255.0  # values in [0, 1]
    if x.shape[0] == 4:
        x = x[:3]  # drop alpha
    if x.shape[0] == 3 and channels == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)  # ITU-R 601 luma, as PIL's "L"
    elif x.shape[0] == 1 and channels == 3:
        x = x.expand(3, -1, -1)
    if tuple(x.shape[1:]) != (size, size):
        x = F.interpolate(x.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True).squeeze(0)
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)
