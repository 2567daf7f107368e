"""torchvision.transforms.v2 presets for users' images, and MixUp/CutMix on device batches.

The presets run per image in the loader (uint8 in, uint8 out: workers and the transfer move
bytes, not floats); MixUp/CutMix run on whole normalised batches after the transfer.
"""

from typing import Literal

import torch
from torch import nn
from torchvision.transforms import v2

AutoAugment = Literal["randaugment", "trivialaugment"] | None


def train_transform(image_size: int, crop_scale: tuple[float, float] = (0.08, 1.0), horizontal_flip: bool = True,
                    auto_augment: AutoAugment = None, random_erasing: float = 0.0) -> v2.Compose:
    """RandomResizedCrop + horizontal flip, then RandAugment or TrivialAugmentWide, then random erasing."""
    ops: list[nn.Module] = [v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), antialias=True)]
    if horizontal_flip:
        ops.append(v2.RandomHorizontalFlip())
    if auto_augment == "randaugment":
        ops.append(v2.RandAugment())
    elif auto_augment == "trivialaugment":
        ops.append(v2.TrivialAugmentWide())
    if random_erasing > 0:
        # Erased rectangles are black (0) here, on uint8; after normalisation that is a dark patch.
        ops.append(v2.RandomErasing(p=random_erasing, value=0))
    return v2.Compose(ops)


def eval_transform(image_size: int, crop_fraction: float = 0.875) -> v2.Compose:
    """Resize the short side to image_size / crop_fraction, then the central image_size square."""
    return v2.Compose([v2.Resize(int(round(image_size / crop_fraction)), antialias=True), v2.CenterCrop(image_size)])


def batch_mixing(num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> nn.Module | None:
    """MixUp and/or CutMix of a batch (images, label indices) -> (images, soft targets N x C); None when both are off.

    With both on, each batch gets one of the two at random (as timm and torchvision's references do).
    """
    mixes = []
    if mixup_alpha > 0:
        mixes.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixes.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


def channel_statistics(images: list[torch.Tensor]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std, in [0, 1] units, of uint8 C x H x W images (float64 sums)."""
    total = squares = None
    count = 0
    for image in images:
        x = image.to(torch.float64).div_(255.0).flatten(1)
        total = x.sum(1) if total is None else total + x.sum(1)
        squares = (x * x).sum(1) if squares is None else squares + (x * x).sum(1)
        count += x.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()
