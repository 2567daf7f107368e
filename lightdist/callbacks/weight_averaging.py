"""Averaged weights (EMA, SWA) on Lightning's WeightAveraging: validation runs on the averaged
weights, checkpoints hold them as their `state_dict` (so eval, predict and transfer read
them), and training ends with them in the model.

Two changes to Lightning's behaviour:
- outside fit (testing the best checkpoint after fit, `lightdist eval`) a checkpoint is not
  restored to its raw training weights (`current_model_state`), which
  WeightAveraging.on_load_checkpoint does whenever the callback has an averaged model, i.e.
  still after fit; evaluation keeps the averaged `state_dict`;
- until the first update (SWA's first epochs, EMA's update_starting_at_step) there is no
  average yet: validation, checkpoints and the end of training use the weights being trained,
  where Lightning would use the copy of the initial weights the average starts from.
"""

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

from lightdist.errors import ConfigError


class _EvaluateAveraged:
    _average_model: Any

    def _averaged(self) -> bool:
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swapped = self._averaged()
        if self._swapped:
            super().on_validation_epoch_start(trainer, pl_module)  # type: ignore[misc]

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(self, "_swapped", False):
            super().on_validation_epoch_end(trainer, pl_module)  # type: ignore[misc]
        self._swapped = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._averaged():
            super().on_train_end(trainer, pl_module)  # type: ignore[misc]

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._averaged():
            super().on_save_checkpoint(trainer, pl_module, checkpoint)  # type: ignore[misc]

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # resuming: both models come back
            super().on_load_checkpoint(trainer, pl_module, checkpoint)  # type: ignore[misc]


class EMA(_EvaluateAveraged, EMAWeightAveraging):
    """Exponential moving average of the weights (and, with use_buffers, of BatchNorm statistics):
    avg = decay * avg + (1 - decay) * weights, every `update_every_n_steps` optimizer steps from
    `update_starting_at_step` (or epoch) on."""

    def __init__(self, decay: float = 0.999, update_every_n_steps: int = 1, update_starting_at_step: int | None = None,
                 update_starting_at_epoch: int | None = None, use_buffers: bool = True, device: str | None = None):
        if not 0.0 <= decay <= 1.0:
            raise ConfigError(f"callbacks.ema.decay must be in [0, 1], got {decay}",
                              hint="0.999 for runs of a few thousand steps, 0.9999 for longer ones")
        super().__init__(device=device, use_buffers=use_buffers, decay=decay,
                         update_every_n_steps=update_every_n_steps, update_starting_at_step=update_starting_at_step,
                         update_starting_at_epoch=update_starting_at_epoch)


class SWA(_EvaluateAveraged, WeightAveraging):
    """Stochastic weight averaging: the equal average of the weights at the end of every epoch (or
    every `update_every_n_steps` steps) from `swa_epoch_start` on: an epoch index, or a fraction of
    trainer.max_epochs when below 1. The learning rate follows the run's own scheduler (Lightning's
    StochasticWeightAveraging would replace it and adds an extra epoch for BatchNorm statistics;
    here use_buffers averages those statistics instead)."""

    def __init__(self, swa_epoch_start: float = 0.75, update_every_n_steps: int = 0, use_buffers: bool = True,
                 device: str | None = None):
        if swa_epoch_start < 0 or update_every_n_steps < 0:
            raise ConfigError("callbacks.swa.swa_epoch_start and update_every_n_steps must be >= 0",
                              hint="swa_epoch_start=0.75 (the last quarter), update_every_n_steps=0 (once per epoch)")
        super().__init__(device=device, use_buffers=use_buffers)
        self.swa_epoch_start = swa_epoch_start
        self.update_every_n_steps = update_every_n_steps
        self._start_epoch = 0
        self._epoch = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        start = self.swa_epoch_start
        if 0 < start < 1:
            if trainer.max_epochs is None or trainer.max_epochs < 0:
                raise ConfigError("callbacks.swa.swa_epoch_start as a fraction needs trainer.max_epochs",
                                  hint="give swa_epoch_start as an epoch index (e.g. 10)")
            start = int(start * trainer.max_epochs)
        self._start_epoch = int(start)
        super().setup(trainer, pl_module, stage)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch = trainer.current_epoch

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if self.update_every_n_steps > 0:
            return step_idx is not None and self._epoch >= self._start_epoch and \
                (step_idx + 1) % self.update_every_n_steps == 0
        return epoch_idx is not None and epoch_idx >= self._start_epoch
