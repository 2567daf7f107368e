"""Text classification: the shared classification task, fed (token ids, lengths) batches.

Loss, metrics synced across ranks, the confusion matrix with label names, optimizer groups
and schedules all come from ClassificationTask; only the model call differs, and a teacher
to distil from must read the same token ids.
"""

from typing import Any

import torch
from torch import nn

from lightdist.tasks.classification import ClassificationTask


class TextClassificationTask(ClassificationTask):
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
