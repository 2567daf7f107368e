"""Text classification: the shared classification task, fed (token ids, lengths) batches.

Loss, metrics synced across ranks, the confusion matrix with label names, optimizer groups
and schedules all come from ClassificationTask; only the model call differs.
"""

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lightdist.tasks.classification import ClassificationTask


class TextClassificationTask(ClassificationTask):
    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., dict] | None = None,
        label_smoothing: float = 0.0,
        class_names: list[str] | None = None,
        compile: bool | str = False,
    ):
        super().__init__(model, num_classes, optimizer, scheduler, label_smoothing, class_names, compile)

    def call_model(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        tokens, lengths = inputs
        return model(tokens, lengths)
