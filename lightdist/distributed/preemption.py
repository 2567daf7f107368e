"""Preemption and wall-time limits: save where all ranks agree, requeue, resume in the same run.

Lightning's SLURM handler saves the checkpoint inside the signal handler itself, on every
rank, at whatever point each rank happens to be: with DDP one rank can be inside a gradient
all-reduce while another enters the checkpoint's barrier, and the job hangs until it is
killed (seen here with two gloo ranks under srun). Here the handler only raises a flag. At
the end of each training step the ranks agree on the flag (an all-reduce on a gloo group,
so GPUs are never synchronised for it); when any rank was signalled, all of them save the
same checkpoint at the same step, rank 0 asks SLURM to requeue the job, and training stops.
The requeued job (same id, same run directory) resumes from that checkpoint.

SIGTERM is handled the same way: it is what SLURM sends on preemption (PreemptMode=REQUEUE),
`scontrol requeue` and the time limit, KillWait (or GraceTime) seconds before SIGKILL. While
training runs this handler replaces Lightning's own SIGTERM handler, which would otherwise
broadcast from inside the signal handler and stop without a checkpoint. The checkpoint is
written under a temporary name and renamed, so a SIGKILL in the middle of the save leaves the
previous checkpoints as they were.
"""

import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from lightdist.errors import ConfigError

log = logging.getLogger(__name__)
PREEMPTED_CHECKPOINT = "preempted.ckpt"
UNCATCHABLE = (signal.SIGKILL, signal.SIGSTOP)


def parse_signal(name: str, key: str = "preemption.signal") -> signal.Signals:
    text = str(name).upper()
    try:
        signum = signal.Signals[text if text.startswith("SIG") else f"SIG{text}"]
    except KeyError as exc:
        raise ConfigError(f"{key}={name} is not a signal name", hint="e.g. SIGUSR1, SIGTERM") from exc
    if signum in UNCATCHABLE:
        raise ConfigError(f"{key}={name} cannot be caught by a process", hint="e.g. SIGUSR1, SIGTERM")
    return signum


def configured_signals(node: Any) -> list[signal.Signals]:
    """The preemption signals of the config's `preemption` node: `signals` (a list), plus the
    older single `signal` when it is set (command lines that set only it keep working)."""
    names = node.get("signals")
    if names is None:
        names = []
    elif isinstance(names, str):
        names = [names]
    signals = [parse_signal(n, "preemption.signals") for n in names]
    if node.get("signal"):
        signals.append(parse_signal(node.get("signal")))
    if not signals:
        raise ConfigError("preemption lists no signals", hint="set preemption.signals=[SIGUSR1,SIGTERM], "
                          "or preemption=null to switch preemption handling off")
    return list(dict.fromkeys(signals))


def slurm_job_for_requeue() -> str | None:
    if "SLURM_JOB_ID" not in os.environ:
        return None
    if "SLURM_ARRAY_JOB_ID" in os.environ and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def requeue_slurm_job() -> bool:
    """`scontrol requeue` this SLURM job (array task) if it is still running; False outside SLURM,
    when it fails, or when SLURM is ending the job itself: a job being cancelled must stay
    cancelled, and one being requeued (preemption, scontrol requeue) or timed out is left to SLURM."""
    job = slurm_job_for_requeue()
    if job is None:
        return False
    state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()
    if state and state != "RUNNING":
        log.info(f"SLURM job {job} is {state.lower()} (cancelled, requeued or out of time): left to SLURM")
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
    def __init__(self, signals: str | Sequence[str] = ("SIGUSR1", "SIGTERM"), check_every_n_steps: int = 1):
        names = [signals] if isinstance(signals, str) else list(signals)
        self.signums = list(dict.fromkeys(parse_signal(n) for n in names))
        self.check_every_n_steps = max(1, int(check_every_n_steps))
        self.signalled: signal.Signals | None = None
        self.preempted = False
        self._previous: dict[signal.Signals, Any] = {}
        self._group: Any = None
        self._saving = False

    @classmethod
    def from_config(cls, node: Any) -> "PreemptionHandler":
        return cls([s.name for s in configured_signals(node)], node.get("check_every_n_steps", 1))

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Nothing else: a signal handler may run in the middle of a collective.
        self.signalled = self.signalled or signal.Signals(signum)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for signum in self.signums:
            self._previous[signum] = signal.signal(signum, self._on_signal)
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
        # Back to Lightning's handlers for testing: a SIGTERM after training stops the job as before.
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _anyone_signalled(self, trainer: L.Trainer) -> bool:
        if trainer.world_size == 1 or not dist.is_initialized():
            return self.signalled is not None
        flag = torch.tensor([int(self.signalled or 0)], dtype=torch.int32)
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
        partial = path.with_name(f"{path.name}.partial")
        self._saving = True
        try:
            # the full state (optimizer, loops) to resume from; collective for sharded strategies, ends with a barrier
            trainer.save_checkpoint(partial, weights_only=False)
        finally:
            self._saving = False
        if trainer.is_global_zero:
            replace(partial, path)
            why = self.signalled.name if self.signalled else "another rank's signal"
            log.info(f"preemption ({why}): saved {path} at step {trainer.global_step}")
        raise Preempted(f"preempted at step {trainer.global_step}; resume from {path}")


def replace(source: Path, target: Path) -> None:
    """Move a finished checkpoint (file or sharded directory) over the previous one."""
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif source.is_dir() and target.exists():
        target.unlink()
    os.replace(source, target)
