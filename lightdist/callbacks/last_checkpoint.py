"""checkpoints/last.ckpt: the state a resumed, requeued or elastically restarted run continues from.

Written at every epoch end and, optionally, every N optimizer steps or M minutes of training, which
bounds what a rank that dies mid-epoch loses. Lightning's ModelCheckpoint takes one trigger only
(epochs, steps or time); this one keeps the epoch trigger next to the step or time trigger.
"""

from datetime import timedelta
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint

from lightdist.compat import also_every_epoch
from lightdist.errors import ConfigError


def _positive(name: str, value: float | None, kinds: tuple[type, ...]) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, kinds) or not value > 0):
        what = "a positive integer" if kinds == (int,) else "a positive number"
        raise ConfigError(f"checkpoint.{name}={value!r} must be {what} or null",
                          hint=f"set checkpoint.{name}=<n> > 0, or checkpoint.{name}=null to write last.ckpt "
                               "at epoch ends only")


class LastCheckpoint(ModelCheckpoint):
    """ModelCheckpoint writing one file (`filename`, default last.ckpt) whatever the monitored metric did.

    every_n_steps: also every N optimizer steps. every_minutes: also every M minutes of training;
    rank 0's clock decides and Lightning broadcasts the decision, so every rank saves at the same step.
    """

    def __init__(self, dirpath: str, every_n_steps: int | None = None, every_minutes: float | None = None,
                 filename: str = "last", **kwargs: Any):
        _positive("every_n_steps", every_n_steps, (int,))
        _positive("every_minutes", every_minutes, (int, float))
        if every_n_steps and every_minutes:
            raise ConfigError(f"checkpoint.every_n_steps={every_n_steps} and checkpoint.every_minutes={every_minutes} "
                              "are both set", hint="set one of them, the other to null")
        interval = timedelta(minutes=every_minutes) if every_minutes else None
        periodic = {"every_n_train_steps": every_n_steps, "train_time_interval": interval}
        triggers = periodic if every_n_steps or every_minutes else {"every_n_epochs": 1}
        super().__init__(dirpath=dirpath, filename=filename, **{
            "monitor": None, "save_top_k": 1, "save_last": False, "enable_version_counter": False, **triggers,
            **kwargs})
        if every_n_steps or every_minutes:
            also_every_epoch(self)
