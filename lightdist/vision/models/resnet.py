"""ResNets for small images (32x32 CIFAR, 28x28 MNIST-like).

Two families, as in the papers that defined them:
- ResNet-18/34 with a 3x3 stride-1 stem and no max-pool, the usual adaptation of
  He et al. (2016)'s ImageNet networks to 32x32 inputs: stages of 64/128/256/512 channels.
- ResNet-20/56, He et al.'s own CIFAR networks (section 4.2): 3 stages of 16/32/64
  channels with n = (depth - 2) / 6 basic blocks each.
"""

from typing import Literal

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            # Projection shortcut (option B of the paper) wherever the shape changes.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


_LAYOUTS = {
    # depth: (channels per stage, blocks per stage)
    18: ((64, 128, 256, 512), (2, 2, 2, 2)),
    34: ((64, 128, 256, 512), (3, 4, 6, 3)),
    20: ((16, 32, 64), (3, 3, 3)),
    56: ((16, 32, 64), (9, 9, 9)),
}


class ResNet(nn.Module):
    def __init__(
        self,
        depth: Literal[18, 20, 34, 56] = 18,
        in_channels: int = 3,
        num_classes: int = 10,
        width_multiplier: float = 1.0,
        dropout: float = 0.0,
        zero_init_residual: bool = True,
    ):
        super().__init__()
        widths, blocks = _LAYOUTS[depth]
        widths = tuple(max(1, int(w * width_multiplier)) for w in widths)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages, channels = [], widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(BasicBlock(channels, width, stride))
                channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            # Each block starts as the identity (Goyal et al. 2017): steadier early training.
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))
