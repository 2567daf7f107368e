"""Text classification: the shared classification task, fed (token ids, lengths) batches.

Loss, metrics synced across ranks, the confusion matrix with label names, optimizer groups
and schedules all come from ClassificationTask; only the model call differs.
"""

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from lightdist.tasks.classification import ClassificationTask
from lightdist.tasks.transfer import Distillation


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
        init_from: str | None = None,
        init_ckpt: Literal["best", "last"] = "best",
        freeze_backbone_epochs: int = 0,
        backbone_lr_factor: float = 1.0,
        train_bn: bool = True,
        distill: Distillation | None = None,
    ):
        super().__init__(model, num_classes, optimizer, scheduler, label_smoothing, class_names, compile,
                         init_from, init_ckpt, freeze_backbone_epochs, backbone_lr_factor, train_bn, distill)

    def call_model(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        tokens, lengths = inputs
        return model(tokens, lengths)

    def check_teacher_data(self, teacher_data: Any, student_data: Any) -> None:
        # Token ids mean something only under the tokenizer that produced them.
        ours = student_data.state_dict().get("tokenizer") if student_data is not None else None
        theirs = teacher_data.state_dict().get("tokenizer") if hasattr(teacher_data, "state_dict") else None
        if ours is not None and theirs is not None and ours != theirs:
            from lightdist.errors import ConfigError

            raise ConfigError("the teacher run tokenizes text differently from this run",
                              hint="pass data.tokenizer_file=<teacher run>/tokenizer.json")
