"""Image augmentation on batched tensors, on the training device, with kornia.

Runs after the batch reached the device (a data module's on_after_batch_transfer), so
the loader only moves uint8 images and the GPU does the work; each sample of the batch
gets its own random parameters.
"""

import kornia.augmentation as K
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
        padding_mode: str = "reflect",
    ):
        super().__init__()
        ops: list[nn.Module] = []
        if crop_padding > 0:
            ops.append(_PaddedRandomCrop(crop_padding, padding_mode))
        if horizontal_flip:
            ops.append(K.RandomHorizontalFlip())
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
    """Pad then crop back to the input size at a random offset per sample (kornia.RandomCrop with padding)."""

    def __init__(self, padding: int, padding_mode: str):
        super().__init__()
        self.padding = padding
        self.padding_mode = padding_mode
        self._crops: dict[tuple[int, int], K.RandomCrop] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2], x.shape[-1])
        if size not in self._crops:
            self._crops[size] = K.RandomCrop(size, padding=self.padding, padding_mode=self.padding_mode)
        return self._crops[size](x)
