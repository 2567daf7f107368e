"""Knowledge distillation from a trained run (Hinton et al. 2015), composed onto a classification
task (config node `distill`):

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)

The teacher is the model of another run, rebuilt from its directory on every rank at setup. It
stays outside the task's module tree: not in checkpoints, not wrapped or synced by DDP. Its
term reaches the loss through the task's loss hooks (Task.add_loss_hook).
"""

from typing import Any, Literal

import lightning as L
import torch
from torch import nn

from lightdist.errors import ConfigError
from lightdist.tasks.transfer import distillation_loss


def load_teacher(teacher: str, ckpt: str, num_classes: int) -> tuple[nn.Module, Any]:
    """(the teacher's model, its rebuilt run): frozen, in eval mode, on the CPU until the first step."""
    from lightdist.runs import load_run

    run = load_run(teacher, ckpt)
    if run.facts.get("num_classes") != num_classes:
        raise ConfigError(f"teacher {run.run_dir} predicts {run.facts.get('num_classes')} classes, "
                          f"the student {num_classes}", hint="distil from a run on the same classes")
    model = run.model.eval()
    model.requires_grad_(False)
    return model, run


class Distillation(L.Callback):
    def __init__(self, teacher: str | None = None, ckpt: Literal["best", "last"] = "best",
                 temperature: float = 4.0, alpha: float = 0.5):
        if temperature <= 0:
            raise ConfigError(f"distill.temperature must be > 0, got {temperature}", hint="e.g. distill.temperature=4")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"distill.alpha must be within [0, 1], got {alpha}", hint="e.g. distill.alpha=0.5")
        self.teacher_source, self.ckpt = teacher, ckpt
        self.temperature, self.alpha = temperature, alpha
        self.teacher: nn.Module | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.teacher is not None:
            return
        num_classes = getattr(pl_module.hparams, "num_classes", None)
        if num_classes is None or not hasattr(pl_module, "call_model"):
            raise ConfigError(f"distillation needs a classification task, not {type(pl_module).__name__}",
                              hint="set distill.teacher=null")
        self.teacher, run = load_teacher(self.teacher_source, self.ckpt, num_classes)
        pl_module.check_teacher_data(run.datamodule, trainer.datamodule)
        pl_module.add_loss_hook(self.loss)

    @torch.no_grad()
    def teacher_logits(self, task: L.LightningModule, batch: Any) -> torch.Tensor:
        param = next(self.teacher.parameters(), None)
        own = next((p for p in task.parameters() if p.is_floating_point()), None)
        if param is not None and own is not None and (param.device, param.dtype) != (own.device, own.dtype):
            self.teacher.to(device=own.device, dtype=own.dtype)  # follows the student (device, true-precision dtype)
        inputs, _ = task.split_batch(batch)
        return task.call_model(self.teacher, inputs)

    def loss(self, task: L.LightningModule, batch: Any, logits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """The task's loss hook: the cross-entropy in, the distillation objective out."""
        n = len(logits)
        task.log("train/ce", loss, batch_size=n)
        total, soft = distillation_loss(logits, self.teacher_logits(task, batch), loss, self.temperature, self.alpha)
        task.log("train/distill_kl", soft, batch_size=n)
        return total
