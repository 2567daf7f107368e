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
        # parameters frozen for now belong to the optimizer from the start. Kept by parameter name:
        # a sharding strategy (fsdp2) replaces the parameter objects between the callbacks' setup
        # and configure_optimizers, but not their names.
        self.scaled_names: set[str] = set()
        self.lr_factor = 1.0
        self.lr_factors: dict[str, float] = {}  # parameter name -> factor (layer-wise decay)
        self.optimize_frozen = False
        self._loss_hooks: list[Callable[..., torch.Tensor]] = []

    def optimized_module(self) -> nn.Module:
        """The module whose parameters the optimizer trains (DQN: the online network only)."""
        return self

    def networks(self) -> list[nn.Module]:
        """The task's networks, each sharded as a unit by strategy=fsdp2 (its blocks first)."""
        model = getattr(self, "model", None)
        return [model] if isinstance(model, nn.Module) else []

    def configure_model(self) -> None:
        """Nothing: strategy=fsdp2 shards the networks itself. Lightning's ModelParallelStrategy
        refuses a LightningModule that does not override this hook."""

    def scale_learning_rate(self, parameters: Collection[nn.Parameter], factor: float) -> None:
        """Train `parameters` at the optimizer's lr * `factor` (one set; a later call replaces it)."""
        ids = {id(p) for p in parameters}
        self.scaled_names = {name for name, p in self.named_parameters() if id(p) in ids}
        self.lr_factor = float(factor)

    def scale_learning_rates(self, factors: Mapping[nn.Parameter, float]) -> None:
        """Train each parameter at the optimizer's lr * its own factor (layer-wise decay); these
        multiply scale_learning_rate's factor. A later call replaces them."""
        by_id = {id(p): float(f) for p, f in factors.items()}
        self.lr_factors = {name: by_id[id(p)] for name, p in self.named_parameters() if id(p) in by_id}

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
        named = dict(self.named_parameters())  # the parameters as they are now (sharded or not)
        optimizer = build_optimizer(self.optimizer_factory, self.optimized_module(),
                                    scaled=[named[n] for n in self.scaled_names if n in named],
                                    lr_factor=self.lr_factor, include_frozen=self.optimize_frozen,
                                    factors={id(named[n]): f for n, f in self.lr_factors.items() if n in named})
        if self.scheduler_factory is None:
            return optimizer
        total, steps_per_epoch = plan_lengths(self.trainer)
        return {"optimizer": optimizer,
                "lr_scheduler": self.scheduler_factory(optimizer, total_steps=total, steps_per_epoch=steps_per_epoch)}
