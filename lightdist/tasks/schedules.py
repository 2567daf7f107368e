"""Learning-rate schedules, each returned in Lightning's lr_scheduler dict form.

Config gives a partial of one of these functions; the task completes it with the
optimizer and the step counts that only the trainer knows (epochs, accumulation and
devices included). Warmup is linear from `warmup_start_factor` of the base rate.

Each schedule is a LambdaLR over a closure rather than a stateful scheduler such as
torch's OneCycleLR: a checkpoint then stores only the step count, and a run resumed with
a longer or shorter plan (trainer.max_epochs changed) follows the plan of its config
from the step it reached instead of failing ("Tried to step N times") or replaying the
old plan.
"""

import math
from collections.abc import Callable
from typing import Literal

from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from lightdist.errors import ConfigError


def _warmup_steps(warmup_steps: int, warmup_epochs: float, steps_per_epoch: int) -> int:
    return max(int(warmup_steps), int(round(warmup_epochs * steps_per_epoch)))


def _with_warmup(warmup: int, start_factor: float, after: Callable[[int], float]) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return start_factor + (1 - start_factor) * step / warmup
        return after(step - warmup)

    return factor


def _cosine(start: float, end: float, progress: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def cosine(optimizer, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0, warmup_epochs: float = 0.0,
           warmup_start_factor: float = 0.01, min_lr_ratio: float = 0.0) -> dict:
    warmup = _warmup_steps(warmup_steps, warmup_epochs, steps_per_epoch)
    span = max(1, total_steps - warmup)
    fn = _with_warmup(warmup, warmup_start_factor, lambda s: _cosine(1.0, min_lr_ratio, s / span))
    return {"scheduler": LambdaLR(optimizer, fn), "interval": "step"}


def linear(optimizer, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0, warmup_epochs: float = 0.0,
           warmup_ratio: float = 0.0, warmup_start_factor: float = 0.01, min_lr_ratio: float = 0.0) -> dict:
    """Linear warmup, then linear decay to min_lr_ratio * lr at the last step (the usual transformer
    fine-tuning schedule). warmup_ratio: warmup as a share of the whole run."""
    if not 0.0 <= warmup_ratio < 1.0:
        raise ConfigError(f"scheduler.warmup_ratio={warmup_ratio} must be in [0, 1)")
    warmup = max(_warmup_steps(warmup_steps, warmup_epochs, steps_per_epoch), int(round(warmup_ratio * total_steps)))
    span = max(1, total_steps - warmup)
    fn = _with_warmup(warmup, warmup_start_factor, lambda s: 1.0 - (1.0 - min_lr_ratio) * min(1.0, s / span))
    return {"scheduler": LambdaLR(optimizer, fn), "interval": "step"}


def step_decay(optimizer, total_steps: int, steps_per_epoch: int, step_epochs: float = 30, gamma: float = 0.1,
               warmup_steps: int = 0, warmup_epochs: float = 0.0, warmup_start_factor: float = 0.01) -> dict:
    warmup = _warmup_steps(warmup_steps, warmup_epochs, steps_per_epoch)
    step_size = max(1, int(round(step_epochs * steps_per_epoch)))
    fn = _with_warmup(warmup, warmup_start_factor, lambda s: gamma ** (s // step_size))
    return {"scheduler": LambdaLR(optimizer, fn), "interval": "step"}


def constant(optimizer, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0, warmup_epochs: float = 0.0,
             warmup_start_factor: float = 0.01) -> dict:
    warmup = _warmup_steps(warmup_steps, warmup_epochs, steps_per_epoch)
    return {"scheduler": LambdaLR(optimizer, _with_warmup(warmup, warmup_start_factor, lambda s: 1.0)),
            "interval": "step"}


def one_cycle(optimizer, total_steps: int, steps_per_epoch: int, pct_start: float = 0.25,
              div_factor: float = 25.0, final_div_factor: float = 1e4,
              anneal_strategy: Literal["cos", "linear"] = "cos") -> dict:
    """Smith's one-cycle policy for the learning rate (momentum is left constant).

    The configured optimizer lr is the peak; the rate rises from peak/div_factor over the
    first `pct_start` of the steps, then anneals to peak/(div_factor*final_div_factor).
    """
    rise = max(1, int(pct_start * total_steps))
    fall = max(1, total_steps - rise)
    start, end = 1.0 / div_factor, 1.0 / (div_factor * final_div_factor)

    def anneal(a: float, b: float, progress: float) -> float:
        if anneal_strategy == "cos":
            return _cosine(a, b, progress)
        return a + (b - a) * min(1.0, max(0.0, progress))

    def factor(step: int) -> float:
        if step < rise:
            return anneal(start, 1.0, step / rise)
        return anneal(1.0, end, (step - rise) / fall)

    return {"scheduler": LambdaLR(optimizer, factor), "interval": "step"}


def plateau(optimizer, total_steps: int, steps_per_epoch: int, monitor: str = "val/loss",
            mode: Literal["min", "max"] = "min", factor: float = 0.1, patience: int = 5, min_lr: float = 0.0) -> dict:
    """Reduce on plateau of a validation metric, checked after each validation (no warmup: it reacts, not plans)."""
    sched = ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience, min_lr=min_lr)
    return {"scheduler": sched, "interval": "epoch", "monitor": monitor, "strict": True}


def plan_lengths(trainer) -> tuple[int, int]:
    """(optimizer steps of the whole run, optimizer steps per epoch) for a schedule, from the trainer.

    Lightning skips loading the training data when trainer.max_epochs=-1 and max_steps is set,
    leaving the number of batches per epoch unknown: the data is set up here to count them.
    """
    total = trainer.estimated_stepping_batches  # also counts the training batches (per rank)
    if not math.isfinite(total):
        raise ConfigError("the learning-rate schedule needs the length of the run, but trainer.max_epochs=-1 "
                          "and trainer.max_steps=-1 train forever",
                          hint="set trainer.max_steps (or trainer.max_epochs), or use scheduler=none")
    if not math.isfinite(trainer.num_training_batches):
        trainer.fit_loop.setup_data()
    batches = trainer.num_training_batches
    per_epoch = math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else int(total)
    return int(total), max(1, per_epoch)
