"""The base of every task: optimizer, learning-rate schedule and parameter groups.

A task gets the optimizer and the schedule as partials from config (optimizer/scheduler
groups) and completes them here: parameter groups with weight decay only where it helps,
optional groups at a scaled learning rate (set by callbacks, e.g. a fine-tuned backbone),
and the step counts of the run that only the trainer knows.
"""

from collections.abc import Callable, Collection, Mapping
from typing import Any

import lightning as L
import torch
from torch import nn

from lightdist.tasks.optim import build_optimizer
from lightdist.tasks.schedules import plan_lengths


class Task(L.LightningModule):
    def __init__(self, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., dict] | None = None):
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # Set by callbacks before the optimizer is built (Lightning calls configure_optimizers
        # after every callback's setup): parameters learning at lr * factor, and whether
        # parameters frozen for now belong to the optimizer from the start.
        self.scaled_parameters: Collection[nn.Parameter] = ()
        self.lr_factor = 1.0
        self.lr_factors: dict[int, float] = {}  # id(parameter) -> factor (layer-wise decay)
        self.optimize_frozen = False
        self._loss_hooks: list[Callable[..., torch.Tensor]] = []

    def optimized_module(self) -> nn.Module:
        """The module whose parameters the optimizer trains (DQN: the online network only)."""
        return self

    def scale_learning_rate(self, parameters: Collection[nn.Parameter], factor: float) -> None:
        """Train `parameters` at the optimizer's lr * `factor` (one set; a later call replaces it)."""
        self.scaled_parameters, self.lr_factor = list(parameters), float(factor)

    def scale_learning_rates(self, factors: Mapping[nn.Parameter, float]) -> None:
        """Train each parameter at the optimizer's lr * its own factor (layer-wise decay); these
        multiply scale_learning_rate's factor. A later call replaces them."""
        self.lr_factors = {id(p): float(f) for p, f in factors.items()}

    def add_loss_hook(self, hook: Callable[..., torch.Tensor]) -> None:
        """`hook(task, batch, outputs, loss) -> loss`, applied in order to every training loss.

        Lets callbacks add terms to the objective (distillation) without the task knowing them.
        """
        self._loss_hooks.append(hook)

    def training_loss(self, batch: Any, outputs: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        for hook in self._loss_hooks:
            loss = hook(self, batch, outputs, loss)
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.optimizer_factory, self.optimized_module(), scaled=self.scaled_parameters,
                                    lr_factor=self.lr_factor, include_frozen=self.optimize_frozen,
                                    factors=self.lr_factors)
        if self.scheduler_factory is None:
            return optimizer
        total, steps_per_epoch = plan_lengths(self.trainer)
        return {"optimizer": optimizer,
                "lr_scheduler": self.scheduler_factory(optimizer, total_steps=total, steps_per_epoch=steps_per_epoch)}
