"""The callback bench/startup.py adds to the runs it times (+callbacks.startup_probe._target_=...):
each rank writes, to <path>.<global rank>.json, the wall-clock times (time.time()) of the moments
of its start-up: the process started, its Trainer was built (this callback is built with it),
Lightning's setup (process group up, data set up), training started (model wrapped), the first
optimizer step ended."""

import json
import os
import time

import lightning as L


def process_started() -> float | None:
    """When this process started, from /proc (Linux; 10 ms resolution); None elsewhere."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time, clock ticks after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


class StartupProbe(L.Callback):
    def __init__(self, path: str):
        self.path = path
        self.times = {"started": process_started(), "trainer_built": time.time()}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.times.setdefault("setup", time.time())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.times["train_start"] = time.time()

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step >= 1 and "first_step" not in self.times:
            self.times["first_step"] = time.time()
            with open(f"{self.path}.{trainer.global_rank}.json", "w") as f:
                json.dump(self.times, f)
