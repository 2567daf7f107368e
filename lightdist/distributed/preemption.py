"""Preemption and wall-time limits: save where all ranks agree, requeue, resume in the same run.

Lightning's SLURM handler saves the checkpoint inside the signal handler itself, on every
rank, at whatever point each rank happens to be: with DDP one rank can be inside a gradient
all-reduce while another enters the checkpoint's barrier, and the job hangs until it is
killed (seen here with two gloo ranks under srun). Here the handler only raises a flag. At
the end of each training step the ranks agree on the flag (an all-reduce on a gloo group,
so GPUs are never synchronised for it); when any rank was signalled, all of them save the
same checkpoint at the same step, rank 0 asks SLURM to requeue the job, and training stops.
The requeued job (same id, same run directory) resumes from that checkpoint.
"""

import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from lightdist.errors import ConfigError

log = logging.getLogger(__name__)
PREEMPTED_CHECKPOINT = "preempted.ckpt"


def parse_signal(name: str) -> signal.Signals:
    name = str(name).upper()
    try:
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except KeyError as exc:
        raise ConfigError(f"preemption.signal={name} is not a signal name", hint="e.g. SIGUSR1, SIGUSR2") from exc


def slurm_job_for_requeue() -> str | None:
    if "SLURM_JOB_ID" not in os.environ:
        return None
    if "SLURM_ARRAY_JOB_ID" in os.environ and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def requeue_slurm_job() -> bool:
    """`scontrol requeue` this SLURM job (array task); False outside SLURM or when it fails."""
    job = slurm_job_for_requeue()
    if job is None:
        return False
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode != 0:
        log.warning(f"scontrol requeue {job} failed: {result.stderr.strip()}")
        return False
    log.info(f"requeued SLURM job {job}")
    return True


class Preempted(Exception):
    """Raised on every rank at the same step, after the preemption checkpoint was saved."""


class PreemptionHandler(L.Callback):
    def __init__(self, signal_name: str = "SIGUSR1", check_every_n_steps: int = 1):
        self.signum = parse_signal(signal_name)
        self.check_every_n_steps = max(1, int(check_every_n_steps))
        self.signalled = False
        self.preempted = False
        self._previous: Any = None
        self._group: Any = None
        self._saving = False

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = True  # nothing else: a signal handler may run in the middle of a collective

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._previous = signal.signal(self.signum, self._on_signal)
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            # A CPU (gloo) group for this one flag, whatever the training backend.
            self._group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if not self._saving:
            return
        # On restart Lightning adds one to its logging-step counter, because it assumes the
        # checkpoint was taken at the end of a step, before the counter moved on. This one is
        # taken between steps, after it moved: without the correction the resumed run would
        # log every step under the next step's number.
        loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
        if loop.get("_batches_that_stepped", 0) > 0:
            loop["_batches_that_stepped"] -= 1

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def _anyone_signalled(self, trainer: L.Trainer) -> bool:
        if trainer.world_size == 1 or not dist.is_initialized():
            return self.signalled
        flag = torch.tensor([1 if self.signalled else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(flag.item())

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # Between steps: the previous step is complete and logged, the next not begun, so the
        # checkpoint and the metrics file end at the same step.
        if self.preempted or trainer.global_step == 0 or trainer.global_step % self.check_every_n_steps:
            return
        if not self._anyone_signalled(trainer):
            return
        self.preempted = True
        path = Path(trainer.default_root_dir) / "checkpoints" / PREEMPTED_CHECKPOINT
        self._saving = True
        try:
            trainer.save_checkpoint(path)  # collective for sharded strategies; ends with a barrier
        finally:
            self._saving = False
        if trainer.is_global_zero:
            log.info(f"preemption signal: saved {path} at step {trainer.global_step}")
        raise Preempted(f"preempted at step {trainer.global_step}; resume from {path}")
