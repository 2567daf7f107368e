"""Training samples/s and batches/s (and FLOP/s, MFU when asked), measured at the logging steps.

Lightning's ThroughputMonitor synchronises the GPU after every batch (torch.cuda.synchronize in
its update), so that each step's time is exact: the host then waits for the GPU at every step
and cannot queue the next one meanwhile, which costs a host-bound run much of its speed. This
monitor counts samples on the host at every step and reads the clock only at the steps whose
metrics Lightning logs (trainer.log_every_n_steps), after one synchronisation there: the rate
over whole logging intervals is as exact, and the steps between cost no wait. The metric names
are ThroughputMonitor's (train/device/samples_per_sec, train/samples_per_sec summed over ranks,
...), rank 0 logs them; validation and test are not measured.
"""

import math
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops

from lightdist.callbacks import batch_size as first_dimension
from lightdist.compat import compute_dtype


class ThroughputMonitor(L.Callback):
    """batch_size_fn: samples in a batch. window_size: the rates cover about this many of the latest
    steps (whole logging intervals, at least one). flops: also FLOP/s and MFU (the task measures
    its first training batch's FLOPs, about 0.3 s once; a task without `flops_per_batch` has none)."""

    def __init__(self, batch_size_fn: Callable[[Any], int] = first_dimension, window_size: int = 50,
                 flops: bool = False):
        if window_size < 1:
            raise ValueError("callbacks.throughput.window_size must be at least 1")
        self.batch_size_fn = batch_size_fn
        self.window_size = window_size
        self.flops = flops
        self._throughput: Throughput | None = None
        self._t0 = 0.0
        self._batches = self._samples = 0
        self._batches_at_update = 0
        self._updated_at = -1
        self._with_flops = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.flops and hasattr(pl_module, "flops_per_batch"):
            pl_module.count_flops = True  # read by the task's first training step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        every = trainer.log_every_n_steps or self.window_size
        available = None
        self._with_flops = self.flops and hasattr(pl_module, "flops_per_batch")
        if self._with_flops:
            available = get_available_flops(trainer.strategy.root_device, compute_dtype(trainer))
        self._throughput = Throughput(available_flops=available, world_size=trainer.world_size,
                                      window_size=max(2, math.ceil(self.window_size / every) + 1))
        self._restart()

    def _restart(self) -> None:
        """A new base point, where nothing is queued on the device (training starts, a validation
        ended); the time before it is not training time."""
        self._throughput.reset()
        self._t0 = time.perf_counter()
        self._batches = self._samples = self._batches_at_update = 0
        self._throughput.update(time=0.0, batches=0, samples=0, flops=0 if self._with_flops else None)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._throughput is None or not trainer.is_global_zero:  # rank 0 measures and logs
            return
        self._batches += 1
        self._samples += self.batch_size_fn(batch)
        every, step = trainer.log_every_n_steps, trainer.global_step
        if not every or step % every or step == self._updated_at:
            return
        self._updated_at = step
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)  # once per logging interval
        flops = None
        if self._with_flops:  # the FLOPs of the batches since the last update
            flops = (pl_module.flops_per_batch or 0) * (self._batches - self._batches_at_update)
        self._throughput.update(time=time.perf_counter() - self._t0, batches=self._batches, samples=self._samples,
                                flops=flops)
        self._batches_at_update = self._batches
        metrics = {f"train/{k}": v for k, v in self._throughput.compute().items()}
        for logger in trainer.loggers:
            logger.log_metrics({**metrics, "epoch": trainer.current_epoch}, step=step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._throughput is not None and not trainer.sanity_checking and trainer.state.fn == "fit":
            self._restart()
