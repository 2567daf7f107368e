"""Image augmentation on batched tensors, on the training device, with kornia.

Runs after the batch reached the device (a data module's on_after_batch_transfer), so
the loader only moves uint8 images and the GPU does the work; each sample of the batch
gets its own random parameters.
"""

from typing import Literal

import torch
from torch import nn


class ImageAugmentation(nn.Module):
    def __init__(
        self,
        crop_padding: int = 0,
        horizontal_flip: bool = False,
        rotation_degrees: float = 0.0,
        translate: float = 0.0,
        zoom: float = 0.0,
        random_erasing: float = 0.0,
        padding_mode: Literal["reflect", "replicate", "constant", "circular"] = "reflect",
    ):
        super().__init__()
        ops: list[nn.Module] = []
        if crop_padding > 0:
            ops.append(_PaddedRandomCrop(crop_padding, padding_mode))
        if horizontal_flip:
            ops.append(RandomHorizontalFlip())
        if rotation_degrees or translate or zoom or random_erasing > 0:
            import kornia.augmentation as K  # here: kornia costs 0.4 s to import, and crops and flips do not need it
        if rotation_degrees or translate or zoom:
            ops.append(
                K.RandomAffine(
                    degrees=rotation_degrees,
                    translate=(translate, translate) if translate else None,
                    scale=(1 - zoom, 1 + zoom) if zoom else None,
                    padding_mode="zeros",
                )
            )
        if random_erasing > 0:
            # Cutout-style erasing of one rectangle per image (Zhong et al. 2017 defaults).
            ops.append(K.RandomErasing(p=random_erasing, scale=(0.02, 0.33), ratio=(0.3, 3.3)))
        self.ops = nn.Sequential(*ops)

    @property
    def enabled(self) -> bool:
        return len(self.ops) > 0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops(x)


class _PaddedRandomCrop(nn.Module):
    """Pad, then crop back to the input size at a random offset per sample: one gather.

    Written here rather than taken from kornia: kornia's RandomCrop crops sample by sample
    in Python (or warps each image), 5.0 ms per 256 CIFAR images on an H100 against 0.2 ms
    for this single indexing kernel (bench/augment.py) - a third of a
    ResNet-18 training step.
    """

    def __init__(self, padding: int, padding_mode: str):
        super().__init__()
        self.padding = padding
        self.padding_mode = padding_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.padding
        padded = nn.functional.pad(x, (p, p, p, p), mode=self.padding_mode)
        dy = torch.randint(0, 2 * p + 1, (n, 1), device=x.device)
        dx = torch.randint(0, 2 * p + 1, (n, 1), device=x.device)
        rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[batch, channel, rows, cols]


class RandomHorizontalFlip(nn.Module):
    """Mirror each image of the batch with probability 0.5: one select over the batch.

    Written here rather than taken from kornia (whose RandomHorizontalFlip does the same per sample):
    it is the only kornia transform the default recipes use, and importing kornia costs 0.4 s of every
    run's start-up. torchvision's v2 flip draws one coin for the whole batch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(x.shape[0], device=x.device) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(-1), x)


class ResizedCropFlip(nn.Module):
    """RandomResizedCrop (torchvision's area and aspect-ratio ranges) and a random horizontal flip of
    whole batches on the device, for images decoded once to a fixed size (data.on_device=true).

    All crops are resized in one torchvision.ops.roi_align call (bilinear, averaged over each output
    pixel's footprint); where torchvision retries a crop that does not fit, the crop is clamped to the image.
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0), horizontal_flip: bool = True,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        super().__init__()
        self.size = size
        self.scale = tuple(float(s) for s in scale)
        self.log_ratio = (float(torch.tensor(ratio[0]).log()), float(torch.tensor(ratio[1]).log()))
        self.flip = RandomHorizontalFlip() if horizontal_flip else None

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import roi_align

        n, _, h, w = x.shape
        u = torch.rand(n, 4, device=x.device, dtype=torch.float32)
        area = h * w * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 0])
        ratio = torch.exp(self.log_ratio[0] + (self.log_ratio[1] - self.log_ratio[0]) * u[:, 1])
        cw = (area * ratio).sqrt().clamp(1, w)
        ch = (area / ratio).sqrt().clamp(1, h)
        x0 = (w - cw) * u[:, 2]
        y0 = (h - ch) * u[:, 3]
        boxes = torch.stack([torch.arange(n, device=x.device, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], 1)
        out = roi_align(x.float(), boxes, (self.size, self.size), aligned=True).to(x.dtype)
        return self.flip(out) if self.flip is not None else out
