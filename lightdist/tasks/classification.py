"""What every classification task shares: loss, metrics, optimizer and schedule plumbing.

Image and text classification differ only in how a batch becomes logits; everything
else (cross-entropy with label smoothing, torchmetrics synced across ranks, confusion
matrix at the end of test, optimizer groups, schedules) lives here once.
"""

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from lightdist.tasks.metrics import classification_metrics, save_confusion_matrix
from lightdist.tasks.optim import build_optimizer
from lightdist.tasks.schedules import plan_lengths
from lightdist.tasks.transfer import (
    BackboneFreeze,
    Distillation,
    backbone_parameters,
    distillation_loss,
    load_backbone,
    load_teacher,
)


class ClassificationTask(L.LightningModule):
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
        super().__init__()
        # distill is kept as a plain dict: checkpoints must load with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler", "distill"])
        self.hparams["distill"] = dataclasses.asdict(distill) if distill is not None else None
        if freeze_backbone_epochs < 0 or backbone_lr_factor < 0:
            raise ValueError("task.freeze_backbone_epochs and task.backbone_lr_factor must be >= 0")
        # Transfer learning (lightdist.tasks.transfer): weights of another run, loaded in setup("fit")
        # on every rank before the strategy wraps the model; a backbone frozen for the first epochs and
        # trained at lr * backbone_lr_factor; an optional teacher run to distil from.
        self.init_from, self.init_ckpt = init_from, init_ckpt
        self.freeze_backbone_epochs, self.backbone_lr_factor, self.train_bn = (
            freeze_backbone_epochs, backbone_lr_factor, train_bn)
        self.distill = distill if distill is not None and distill.teacher else None
        # Kept out of the module tree: not in state_dict (checkpoints), not wrapped or synced by DDP.
        self._teacher: nn.Module | None = None
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.class_names = list(class_names) if class_names else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_metrics = classification_metrics(num_classes, "val/")
        self.test_metrics = classification_metrics(num_classes, "test/")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.compile = compile
        self._compiled: Callable | None = None
        # Read by Lightning's ThroughputMonitor (FLOP/s and MFU); measured on the first batch.
        self.flops_per_batch: int | None = None

    # -- how a batch becomes logits: subclasses adapt these -------------------------------
    def split_batch(self, batch: Any) -> tuple[Any, torch.Tensor]:
        inputs, targets = batch
        return inputs, targets

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.call_model(self.model if self._compiled is None else self._compiled, inputs)

    def call_model(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        """How the inputs of a batch reach the model: one tensor here; text passes (tokens, lengths)."""
        return model(inputs)

    # -- shared plumbing --------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit":
            self._setup_transfer()
        if self.compile and self._compiled is None:
            # compile=true: torch.compile's default backend (inductor); a string names the backend.
            backend = self.compile if isinstance(self.compile, str) else "inductor"
            # Kept out of the module tree so state_dict keys stay those of the plain model.
            object.__setattr__(self, "_compiled", torch.compile(self.model, backend=backend))

    def _setup_transfer(self) -> None:
        # A resumed run restores its own weights from its checkpoint; the source run is not read again.
        if self.init_from and self.trainer.ckpt_path is None:
            load_backbone(self.model, self.init_from, self.init_ckpt)
        if self.distill is not None and self._teacher is None:
            teacher, run = load_teacher(self.distill, self.hparams.num_classes)
            datamodule = self.trainer.datamodule
            self.check_teacher_data(run.datamodule, datamodule)
            object.__setattr__(self, "_teacher", teacher)

    def check_teacher_data(self, teacher_data: Any, student_data: Any) -> None:
        """Raise when the teacher cannot read the student's batches (text: another tokenizer)."""

    def configure_callbacks(self) -> list[L.Callback]:
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        return [BackboneFreeze(self.freeze_backbone_epochs, self.train_bn)] if self.freeze_backbone_epochs and fitting else []

    def _step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs, targets = self.split_batch(batch)
        if self.flops_per_batch is None and self.training:
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
    # model's step. The per-step training accuracy is a plain tensor for the same reason.
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        logits, targets, loss = self._step(batch)
        n = len(targets)
        if self._teacher is not None:
            self.log("train/ce", loss, batch_size=n)
            loss, soft = distillation_loss(logits, self._teacher_logits(batch), loss,
                                           self.distill.temperature, self.distill.alpha)
            self.log("train/distill_kl", soft, batch_size=n)
        accuracy = (logits.detach().argmax(dim=-1) == targets).float().mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/acc", accuracy, on_step=True, on_epoch=False, batch_size=n)
        return loss

    @torch.no_grad()
    def _teacher_logits(self, batch: Any) -> torch.Tensor:
        teacher = self._teacher
        param = next(teacher.parameters(), None)
        own = next((p for p in self.model.parameters() if p.is_floating_point()), None)
        if param is not None and own is not None and (param.device, param.dtype) != (own.device, own.dtype):
            teacher.to(device=own.device, dtype=own.dtype)  # follows the student (device, true-precision dtype)
        inputs, _ = self.split_batch(batch)
        return self.call_model(teacher, inputs)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        logits, targets, loss = self._step(batch)
        self.val_loss.update(loss, weight=len(targets))
        self.val_metrics.update(logits, targets)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val/", self.val_loss, self.val_metrics)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        logits, targets, loss = self._step(batch)
        self.test_loss.update(loss, weight=len(targets))
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
            fig = save_confusion_matrix(self.test_confusion, self.class_names, path)
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

    def configure_optimizers(self) -> Any:
        transfer = self.backbone_lr_factor != 1.0 or self.freeze_backbone_epochs > 0
        optimizer = build_optimizer(self.optimizer_factory, self,
                                    scaled=backbone_parameters(self.model) if transfer else (),
                                    lr_factor=self.backbone_lr_factor, include_frozen=self.freeze_backbone_epochs > 0)
        if self.scheduler_factory is None:
            return optimizer
        total, steps_per_epoch = plan_lengths(self.trainer)
        return {"optimizer": optimizer,
                "lr_scheduler": self.scheduler_factory(optimizer, total_steps=total, steps_per_epoch=steps_per_epoch)}
