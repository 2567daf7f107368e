"""A callback that end-to-end tests add by override (+callbacks.hang._target_=tests.helpers.hang.Hang) to make
one rank of a multi-process run stop responding, as a rank stuck in I/O or a deadlock would."""

import time
from pathlib import Path

import lightning as L


class Hang(L.Callback):
    """Rank `rank` sleeps at the start of training step `step`, first writing the time to `mark` (if given)."""

    def __init__(self, rank: int = 1, step: int = 2, seconds: float = 3600.0, mark: str | None = None):
        self.rank, self.step, self.seconds, self.mark = rank, step, seconds, mark

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            if self.mark:
                Path(self.mark).write_text(str(time.time()))
            time.sleep(self.seconds)
