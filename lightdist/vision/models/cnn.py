"""The conv-pool-dense CNN that image classification tutorials start with, made sound:
normalisation after each convolution, two convolutions per resolution, dropout in the head."""

from typing import Literal

import torch
from torch import nn

Norm = Literal["batch", "group", "none"]


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        # Per-sample statistics: independent of the batch split across ranks (no SyncBatchNorm needed).
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


def _conv_block(in_channels: int, out_channels: int, norm: Norm) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=norm == "none"),
        _norm(norm, out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=norm == "none"),
        _norm(norm, out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SimpleCNN(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        channels: tuple[int, ...] = (32, 64),
        hidden: int = 256,
        dropout: float = 0.3,
        norm: Norm = "batch",
    ):
        super().__init__()
        blocks, c = [], in_channels
        for width in channels:
            blocks.append(_conv_block(c, width, norm))
            c = width
        self.body = nn.Sequential(*blocks)
        spatial = image_size // (2 ** len(channels))
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c * spatial * spatial, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head[:-1](self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
