"""Which training steps' metrics Lightning writes: the one rule lightdist's per-step host work follows.

Lightning's logger connector writes a training step's metrics when the number of optimizer steps taken,
that step included, is a multiple of trainer.log_every_n_steps. Whatever only feeds those metrics (a
self.log call: some 1,900 Python calls of Lightning's bookkeeping; a value read from the device, which
waits for it) is done on those steps only.
"""

from typing import Any


def logs_step(trainer: Any, step: int) -> bool:
    """Whether the metrics of optimizer step `step` (counted from 1: inside a training_step,
    trainer.global_step + 1; after it, trainer.global_step) are written. log_every_n_steps=0 (Lightning
    writes no step metrics): every step, so that what shows them on the host still sees each one."""
    every = trainer.log_every_n_steps
    return not every or step % every == 0
