"""Wall-clock facts for the summary: when the first optimizer step finished (start-up cost:
imports, process launch, data, DDP set-up) and the steady step rate after it.

Costs one time.time() per step and never synchronises the GPU: there a step ends when the host
has queued it, ahead of the GPU by at most what the launch queue holds (and caught up at every
logging step, where values are read), so the rate over many steps is the GPU's. The rate counts
from the end of the second step to the end of the last, so start-up, allocation and compilation
are excluded: a compiled model (top-level `compile`) compiles in the first step, or in the
second when the throughput monitor counts the first forward's FLOPs (callbacks.throughput.flops),
under a dispatch mode that torch.compile runs eagerly.
"""

import time

import lightning as L


class StepClock(L.Callback):
    def __init__(self):
        self.first_at: float | None = None
        self.first_step = 0
        self.rate_at: float | None = None
        self.rate_step = 0
        self.last_at: float | None = None
        self.last_step = 0

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step < 1:
            return
        now = time.time()
        if self.first_at is None:
            self.first_at, self.first_step = now, trainer.global_step
        elif self.rate_at is None:
            self.rate_at, self.rate_step = now, trainer.global_step
        self.last_at, self.last_step = now, trainer.global_step

    def steps_per_second(self) -> float | None:
        if self.rate_at is None or self.last_step <= self.rate_step:
            return None
        return (self.last_step - self.rate_step) / (self.last_at - self.rate_at)
