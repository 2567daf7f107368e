"""When did the first optimizer step finish? Start-up cost (imports, process launch, data) in the summary."""

import time

import lightning as L


class FirstStepTime(L.Callback):
    def __init__(self):
        self.at: float | None = None

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if self.at is None and trainer.global_step >= 1:
            self.at = time.time()
