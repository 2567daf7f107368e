"""Learning-rate schedules, each returned in Lightning's lr_scheduler dict form.

Config gives a partial of one of these functions; the task completes it with the
optimizer and the step counts that only the trainer knows (epochs, accumulation and
devices included). Warmup is linear from `warmup_start_factor` of the base rate.
"""

import math
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau


def _warmup_steps(warmup_steps: int, warmup_epochs: float, steps_per_epoch: int) -> int:
    return max(int(warmup_steps), int(round(warmup_epochs * steps_per_epoch)))


class _WarmupThen:
    """lr multiplier: linear warmup, then `decay(progress in [0, 1])`. A class, so it pickles into checkpoints."""

    def __init__(self, warmup: int, total: int, start_factor: float, kind: str, **params: float):
        self.warmup, self.total, self.start_factor, self.kind, self.params = warmup, total, start_factor, kind, params

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.start_factor + (1 - self.start_factor) * step / self.warmup
        if self.kind == "cosine":
            progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
            floor = self.params["min_lr_ratio"]
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "step":
            return self.params["gamma"] ** ((step - self.warmup) // self.params["step_size"])
        return 1.0


def cosine(optimizer, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0, warmup_epochs: float = 0.0,
           warmup_start_factor: float = 0.01, min_lr_ratio: float = 0.0) -> dict:
    warmup = _warmup_steps(warmup_steps, warmup_epochs, steps_per_epoch)
    fn = _WarmupThen(warmup, total_steps, warmup_start_factor, "cosine", min_lr_ratio=min_lr_ratio)
    return {"scheduler": LambdaLR(optimizer, fn), "interval": "step"}


def step_decay(optimizer, total_steps: int, steps_per_epoch: int, step_epochs: float = 30, gamma: float = 0.1,
         warmup_steps: int = 0, warmup_epochs: float = 0.0, warmup_start_factor: float = 0.01) -> dict:
    warmup = _warmup_steps(warmup_steps, warmup_epochs, steps_per_epoch)
    step_size = max(1, int(round(step_epochs * steps_per_epoch)))
    fn = _WarmupThen(warmup, total_steps, warmup_start_factor, "step", gamma=gamma, step_size=step_size)
    return {"scheduler": LambdaLR(optimizer, fn), "interval": "step"}


def constant(optimizer, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0, warmup_epochs: float = 0.0,
             warmup_start_factor: float = 0.01) -> dict:
    warmup = _warmup_steps(warmup_steps, warmup_epochs, steps_per_epoch)
    return {"scheduler": LambdaLR(optimizer, _WarmupThen(warmup, total_steps, warmup_start_factor, "constant")),
            "interval": "step"}


def one_cycle(optimizer, total_steps: int, steps_per_epoch: int, pct_start: float = 0.25,
              div_factor: float = 25.0, final_div_factor: float = 1e4, anneal_strategy: Literal["cos", "linear"] = "cos") -> dict:
    """Smith's one-cycle: its first `pct_start` of the steps is the warmup. Peak = each group's configured lr."""
    max_lr = [group["lr"] for group in optimizer.param_groups]
    sched = OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(2, total_steps), pct_start=pct_start,
                       div_factor=div_factor, final_div_factor=final_div_factor, anneal_strategy=anneal_strategy,
                       cycle_momentum=isinstance(optimizer, torch.optim.SGD) and optimizer.defaults.get("momentum", 0) > 0)
    return {"scheduler": sched, "interval": "step"}


def plateau(optimizer, total_steps: int, steps_per_epoch: int, monitor: str = "val/loss", mode: Literal["min", "max"] = "min",
            factor: float = 0.1, patience: int = 5, min_lr: float = 0.0) -> dict:
    """Reduce on plateau of a validation metric, checked after each validation (no warmup: it reacts, not plans)."""
    sched = ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience, min_lr=min_lr)
    return {"scheduler": sched, "interval": "epoch", "monitor": monitor, "strict": True}
