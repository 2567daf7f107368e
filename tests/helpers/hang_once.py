"""Hang, in the first attempt of a torchrun job only: a test kills the hung rank, and the rank that
torchrun restarts trains on past the same step (the killed rank's agent counts the restart in
TORCHELASTIC_RESTART_COUNT; another node's agent may not, so hang on the rank that is killed)."""

import os

from tests.helpers.hang import Hang


class HangOnce(Hang):
    def on_train_batch_start(self, trainer, *args) -> None:
        if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) == 0:
            super().on_train_batch_start(trainer, *args)
