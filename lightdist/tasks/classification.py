"""What every classification task shares: loss, metrics and the test-time confusion matrix.

Image and text classification differ only in how a batch becomes logits; everything
else (cross-entropy with label smoothing, torchmetrics synced across ranks, confusion
matrix at the end of test) lives here once, the optimizer plumbing in the Task base.
Transfer learning, distillation and model options (channels_last, torch.compile) are
callbacks that train.py composes onto the task (lightdist.callbacks).
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from lightdist.logging_steps import logs_step
from lightdist.tasks.base import Task
from lightdist.tasks.metrics import classification_metrics, save_confusion_matrix


def class_indices(targets: torch.Tensor) -> torch.Tensor:
    """Class indices (N) as they are; class probabilities (N x C) as their most likely class."""
    return targets.argmax(dim=-1) if targets.is_floating_point() and targets.ndim > 1 else targets


class ClassificationTask(Task):
    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., dict] | None = None,
        label_smoothing: float = 0.0,
        class_names: list[str] | None = None,
    ):
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        self.model = model
        self.class_names = list(class_names) if class_names else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_metrics = classification_metrics(num_classes, "val/")
        self.test_metrics = classification_metrics(num_classes, "test/")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        # Read by the throughput monitor (FLOP/s and MFU); measured on the first training batch when
        # it asks (callbacks.throughput.flops=true sets count_flops): counting costs ~0.3 s once.
        self.count_flops = False
        self.flops_per_batch: int | None = None

    # -- how a batch becomes logits: subclasses adapt these -------------------------------
    def split_batch(self, batch: Any) -> tuple[Any, torch.Tensor]:
        inputs, targets = batch
        return inputs, targets

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.call_model(self.model, inputs)

    def call_model(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        """How the inputs of a batch reach the model: one tensor here; text passes (tokens, lengths)."""
        return model(inputs)

    def check_teacher_data(self, teacher_data: Any, student_data: Any) -> None:
        """Raise when a teacher trained on `teacher_data` cannot read this task's batches (text: another tokenizer)."""

    # -- shared plumbing --------------------------------------------------------------------
    def _step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs, targets = self.split_batch(batch)
        if self.count_flops and self.flops_per_batch is None and self.training:
            logits = self._counting_flops(inputs)
        else:
            logits = self(inputs)
        return logits, targets, self.criterion(logits, targets)

    def _counting_flops(self, inputs: Any) -> torch.Tensor:
        """The first training forward, counted: FLOPs per batch = 3x forward (backward ~ 2x forward).

        Counted inside the real step so that sharded strategies (FSDP, ZeRO-3) have their
        parameters gathered, as in every other forward.
        """
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            logits = self(inputs)
        self.flops_per_batch = 3 * counter.get_total_flops()
        return logits

    # Per step, metrics are only updated; they are computed (and synced across ranks) once per
    # epoch. Handing Lightning a torchmetrics object in every step's self.log moves the whole
    # metric to the device again on each call: measured at 1.4 ms per call, more than a small
    # model's step. The per-step training accuracy is a plain tensor for the same reason; both are
    # logged only where Lightning writes them. Neither is a progress-bar metric: Lightning converts
    # those to Python numbers after every step (.item(): the host waits for the GPU); the progress displays
    # read train/loss themselves, at the logging steps.
    # Targets are class indices (N) or class probabilities (N x C: MixUp/CutMix soft targets, which
    # CrossEntropyLoss takes as they are, label smoothing included); accuracy and metrics count the
    # most likely class of a soft target.
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        logits, targets, loss = self._step(batch)
        n = len(targets)
        loss = self.training_loss(batch, logits, loss)  # terms added by callbacks (distillation)
        if self._logs_this_step():
            self.log("train/loss", loss, batch_size=n)
            accuracy = (logits.detach().argmax(dim=-1) == class_indices(targets)).float().mean()
            self.log("train/acc", accuracy, on_step=True, on_epoch=False, batch_size=n)
        return loss

    def _logs_this_step(self) -> bool:
        """Whether Lightning writes this training step's metrics (every trainer.log_every_n_steps), or
        the step ends an epoch (callbacks reading callback_metrics there see its loss). Only then are
        train/loss and train/acc logged: a self.log call costs more host time than a small model's
        step, for a value no logger would write."""
        try:
            trainer = self.trainer
            return logs_step(trainer, trainer.global_step + 1) or trainer.is_last_batch
        except (RuntimeError, AttributeError):  # not attached to a trainer (a step called directly), or Fabric
            return True

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        logits, targets, loss = self._step(batch)
        self.val_loss.update(loss, weight=len(targets))
        self.val_metrics.update(logits, class_indices(targets))

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val/", self.val_loss, self.val_metrics)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        logits, targets, loss = self._step(batch)
        self.test_loss.update(loss, weight=len(targets))
        targets = class_indices(targets)
        self.test_metrics.update(logits, targets)
        self.test_confusion.update(logits, targets)

    def _log_epoch_metrics(self, prefix: str, loss: MeanMetric, metrics) -> None:
        values = {f"{prefix}loss": loss.compute(), **metrics.compute()}
        loss.reset()
        metrics.reset()
        # Already identical on every rank (torchmetrics synced them); sync_dist only keeps
        # Lightning from warning about epoch-level values logged without it.
        self.log_dict({k: v for k, v in values.items() if k not in (f"{prefix}acc", f"{prefix}loss")}, sync_dist=True)
        self.log_dict({k: values[k] for k in (f"{prefix}acc", f"{prefix}loss")}, prog_bar=True, sync_dist=True)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        return torch.softmax(self(inputs).float(), dim=-1)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test/", self.test_loss, self.test_metrics)
        # compute() gathers the counts of every rank; only rank 0 draws and saves.
        confusion = self.test_confusion.compute()
        if self.trainer.is_global_zero:
            path = Path(self.trainer.default_root_dir) / "confusion_matrix.png"
            fig = save_confusion_matrix(confusion, self.class_names, path)
            self._log_figure("test/confusion_matrix", fig, path)
            import matplotlib.pyplot as plt

            plt.close(fig)
            torch.save(confusion.cpu(), path.with_suffix(".pt"))
        self.test_confusion.reset()

    def _log_figure(self, name: str, fig, path: Path) -> None:
        for logger in self.loggers:
            experiment = logger.experiment
            if hasattr(experiment, "add_figure"):  # TensorBoard
                experiment.add_figure(name, fig, global_step=self.global_step)
            elif hasattr(logger, "log_image"):  # wandb
                logger.log_image(key=name, images=[str(path)])
