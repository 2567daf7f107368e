"""Image classification: the shared classification task plus channels_last memory format."""

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from lightdist.tasks.classification import ClassificationTask
from lightdist.tasks.transfer import Distillation


class ImageClassificationTask(ClassificationTask):
    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., dict] | None = None,
        label_smoothing: float = 0.0,
        class_names: list[str] | None = None,
        compile: bool | str = False,
        init_from: str | None = None,
        init_ckpt: Literal["best", "last"] = "best",
        freeze_backbone_epochs: int = 0,
        backbone_lr_factor: float = 1.0,
        train_bn: bool = True,
        distill: Distillation | None = None,
        channels_last: bool = False,
    ):
        super().__init__(model, num_classes, optimizer, scheduler, label_smoothing, class_names, compile,
                         init_from, init_ckpt, freeze_backbone_epochs, backbone_lr_factor, train_bn, distill)
        self.channels_last = channels_last
        if channels_last:
            # NHWC lets cuDNN use tensor-core convolutions without transposes (mixed precision on GPUs).
            self.model = self.model.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return super().forward(images)
