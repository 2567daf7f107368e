"""Preemption and wall-time limits: save where all ranks agree, requeue, resume in the same run.

Lightning's SLURM handler saves the checkpoint inside the signal handler itself, on every
rank, at whatever point each rank happens to be: with DDP one rank can be inside a gradient
all-reduce while another enters the checkpoint's barrier, and the job hangs until it is
killed (seen here with two gloo ranks under srun). Here the handler only raises a flag. At
the end of each training step the ranks start agreeing on the flag (an asynchronous all-reduce
on a gloo group, so GPUs are never synchronised for it) and read the verdict before the next
step; when any rank was signalled, all of them save the same checkpoint at the same step, rank 0
asks SLURM to requeue the job, and training stops.
The requeued job (same id, same run directory) resumes from that checkpoint.

SIGTERM is handled the same way: it is what SLURM sends on preemption (PreemptMode=REQUEUE),
`scontrol requeue` and the time limit, KillWait (or GraceTime) seconds before SIGKILL. While
training runs this handler replaces Lightning's own SIGTERM handler, which would otherwise
broadcast from inside the signal handler and stop without a checkpoint. The checkpoint is
written under a temporary name and renamed, so a SIGKILL in the middle of the save leaves the
previous checkpoints as they were.

The Lightning callback that does this is lightdist.callbacks.preemption.PreemptionHandler.
"""

import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

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


def replace(source: Path, target: Path) -> None:
    """Move a finished checkpoint (file or sharded directory) over the previous one."""
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif source.is_dir() and target.exists():
        target.unlink()
    os.replace(source, target)
