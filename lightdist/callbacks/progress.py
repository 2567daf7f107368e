"""Progress as plain lines, for output that is not a terminal (SLURM logs, CI, pipes).

A live bar (Rich, TQDM) redraws one line with control characters: in a file it leaves either
nothing readable or thousands of fragments. This bar prints a whole line now and then:

    step 150/940  epoch 2/8  train/loss 0.4123  val/acc 0.8450  2210 samples/s  ETA 0:01:05

build_callbacks keeps it instead of the live bar when stdout is not a terminal. As a
ProgressBar it is what Lightning disables on ranks > 0 and with enable_progress_bar=false.

Printing a value of a device tensor makes the host wait for the GPU: the metrics are read at the
logging steps (trainer.log_every_n_steps, where Lightning reads them anyway) and for lines due
by step count, train/loss being the loss of the step the line ends; a line due by time at another
step repeats the values read last. RichProgress
(the live bar) likewise shows train/loss as of the last logging step.
"""

import math
import sys
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from lightdist.callbacks import batch_size
from lightdist.logging_steps import logs_step


class LogProgress(ProgressBar):
    def __init__(self, every_n_steps: int | None = 50, every_n_seconds: float | None = 60.0):
        super().__init__()
        if not every_n_steps and not every_n_seconds:
            raise ValueError("callbacks.progress_log needs every_n_steps or every_n_seconds")
        self.every_n_steps, self.every_n_seconds = every_n_steps, every_n_seconds
        self._enabled = True
        self._started_at = self._last_at = 0.0
        self._start_step = self._last_step = 0
        self._samples = 0
        self._total: float = math.inf
        self._metrics: dict[str, Any] | None = None  # as last read

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started_at = self._last_at = time.monotonic()
        self._start_step = self._last_step = trainer.global_step  # a resumed run starts past 0
        self._samples = 0
        self._total = trainer.estimated_stepping_batches

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._enabled:
            return
        self._samples += batch_size(batch)
        now, step = time.monotonic(), trainer.global_step
        by_steps = bool(self.every_n_steps) and step - self._last_step >= self.every_n_steps
        if by_steps or (self.every_n_seconds and now - self._last_at >= self.every_n_seconds):
            if by_steps or logging_step(trainer):
                self._metrics = train_metrics(self, trainer, pl_module, step_loss=_step_loss(outputs, trainer))
            self._emit(self._train_line(trainer, now))
            self._last_at, self._last_step, self._samples = now, step, 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        values = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        self._emit(f"validation  epoch {trainer.current_epoch + 1}  {_format(values)}".rstrip())

    def _train_line(self, trainer: L.Trainer, now: float) -> str:
        step, total = trainer.global_step, self._total
        parts = [f"step {step}/{total}" if math.isfinite(total) else f"step {step}"]
        epochs = trainer.max_epochs
        parts.append(f"epoch {trainer.current_epoch + 1}/{epochs}" if epochs and epochs > 0
                     else f"epoch {trainer.current_epoch + 1}")
        if self._metrics:
            parts.append(_format(self._metrics))
        if now > self._last_at:  # this rank's samples; the ranks share the work evenly
            parts.append(f"{self._samples * trainer.world_size / (now - self._last_at):.0f} samples/s")
        steps_done = step - self._start_step
        if steps_done > 0 and math.isfinite(total):
            eta = (total - step) * (now - self._started_at) / steps_done
            parts.append(f"ETA {timedelta(seconds=round(eta))}")
        return "  ".join(parts)

    def _emit(self, line: str) -> None:
        print(line, file=sys.stdout, flush=True)


class RichProgress(RichProgressBar):
    """Lightning's RichProgressBar, with train/loss (logged, but not as a progress-bar metric,
    which Lightning would read after every step) read at the logging steps only."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._metrics: dict[str, Any] = {}

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        if trainer.training and not logging_step(trainer):
            return self._metrics  # as of the last logging step
        self._metrics = train_metrics(super(), trainer, pl_module, keep_v_num=True)
        return self._metrics


def logging_step(trainer: L.Trainer) -> bool:
    """Whether the step that just ended is one whose metrics Lightning logs (and so reads)."""
    return logs_step(trainer, trainer.global_step)


def _step_loss(outputs: Any, trainer: L.Trainer) -> torch.Tensor | None:
    """The training loss of the step that just ended, from what its training_step returned (the tasks
    log train/loss only at the logging steps). Lightning hands the callbacks that loss divided by
    accumulate_grad_batches (what it back-propagates)."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        return None
    return loss.detach() * trainer.accumulate_grad_batches


def train_metrics(bar: Any, trainer: L.Trainer, pl_module: L.LightningModule, keep_v_num: bool = False,
                  step_loss: torch.Tensor | None = None) -> dict[str, Any]:
    """The bar's metrics with train/loss first (`step_loss`, else as last logged), read now as Python numbers."""
    metrics = {k: v for k, v in bar.get_metrics(trainer, pl_module).items() if keep_v_num or k != "v_num"}
    loss = step_loss if step_loss is not None else trainer.callback_metrics.get("train/loss")
    if "train/loss" not in metrics and loss is not None:  # logged, not as a progress-bar metric
        metrics = {"train/loss": loss, **metrics}
    return {k: _number(v) for k, v in metrics.items()}


def _number(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value


def _format(values: dict[str, Any]) -> str:
    out = []
    for name, value in values.items():
        try:
            out.append(f"{name} {float(value):.4g}")
        except (TypeError, ValueError):
            out.append(f"{name} {value}")
    return "  ".join(out)
