"""Interrupting a run at a chosen batch, and comparing how two runs ended.

`SignalAt` is added from the command line, so the run under test is the real CLI:

    +callbacks.interrupt._target_=tests.helpers.interrupt.SignalAt +callbacks.interrupt.batch=5

The subprocess must be able to import `tests`: pass `interrupt_env()` (PYTHONPATH=<repo>) to run_cli.
A resumed run (run_dir=... ckpt_path=last) takes the run's saved overrides again, SignalAt included;
its count goes on from the checkpoint, so each listed batch signals once. +callbacks.interrupt.signal=SIGKILL
stands for a crash: resume with callbacks.interrupt.batch=<a count never reached>, since the batches
after the last checkpoint run again.
"""

import csv
import os
import signal as signals
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from tests.helpers.cli import REPO, cli_env


class SignalAt(L.Callback):
    """Sends `signal` to its own process once `batch` training batches have run, counted across epochs
    and across resumes (Lightning's restored batch progress), on global rank 0 only: the other ranks
    learn of it through the preemption handler's all-reduce, as they would from a real scheduler.
    `batch` may be a list: one signal after each count (a run interrupted and resumed several times)."""

    def __init__(self, batch: int | Sequence[int], signal: str = "SIGUSR1"):
        self.batches = {int(batch)} if isinstance(batch, (int, str)) else {int(b) for b in batch}
        self.signum = signals.Signals[signal]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.total.ready  # this batch included
        if trainer.is_global_zero and done in self.batches:
            os.kill(os.getpid(), self.signum)


def interrupt_env(**extra: str) -> dict[str, str]:
    """cli_env with the repository on PYTHONPATH, so `tests.helpers.interrupt` imports in the CLI."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return cli_env(PYTHONPATH=path, **extra)


def interrupt_args(*batches: int) -> list[str]:
    """CLI overrides adding SignalAt for the given batch counts."""
    value = str(batches[0]) if len(batches) == 1 else "[" + ",".join(map(str, batches)) + "]"
    return ["+callbacks.interrupt._target_=tests.helpers.interrupt.SignalAt", f"+callbacks.interrupt.batch={value}"]


def final_weights(run_dir: Path, ckpt: str = "last.ckpt") -> dict[str, torch.Tensor]:
    checkpoint = torch.load(Path(run_dir) / "checkpoints" / ckpt, map_location="cpu", weights_only=True)
    return {k: v.detach().to(torch.float64) for k, v in checkpoint["state_dict"].items()
            if torch.is_tensor(v) and v.is_floating_point()}


def max_weight_difference(run_a: Path, run_b: Path, ckpt: str = "last.ckpt") -> float:
    """Max abs difference over the task's state_dict of two runs' checkpoints, in fp64."""
    a, b = final_weights(run_a, ckpt), final_weights(run_b, ckpt)
    assert a.keys() == b.keys(), f"different parameters: {sorted(a.keys() ^ b.keys())}"
    assert a, f"no floating-point weights in {run_a}"
    return max(float((a[k] - b[k]).abs().max()) if a[k].numel() else 0.0 for k in a)


def train_losses(run_dir: Path, key: str = "train/loss") -> dict[int, str]:
    """Logged training losses by step, as written (strings: compared exactly, not rounded)."""
    with open(Path(run_dir) / "metrics.csv") as f:
        return {int(r["step"]): r[key] for r in csv.DictReader(f) if r.get(key)}


def run_interrupted(args: list[str], cwd: Path, batches: Sequence[int], env: dict | None = None,
                    timeout: float = 300) -> tuple[Path, list[str]]:
    """Runs the CLI with SignalAt at `batches`, then resumes it (run_dir=<its dir> ckpt_path=last) after
    each preemption until it completes. Returns the run directory and each resumed process's output."""
    from tests.helpers.cli import read_summary, run_cli, run_dirs

    interrupt = interrupt_args(*batches)
    env = env or interrupt_env()
    before = set(run_dirs(cwd, _name(args)))
    run_cli([*args, *interrupt], cwd=cwd, env=env, timeout=timeout)
    (run_dir,) = set(run_dirs(cwd, _name(args))) - before
    resumed: list[str] = []
    for _ in batches:
        summary = read_summary(run_dir)
        assert summary["preempted"], f"the run was not interrupted: {summary}"
        proc = run_cli([*args, f"run_dir={run_dir}", "ckpt_path=last", *interrupt], cwd=cwd, env=env, timeout=timeout)
        resumed.append(proc.stdout + proc.stderr)
    assert not read_summary(run_dir)["preempted"]
    return run_dir, resumed


def _name(args: list[str]) -> str:
    return next((a.split("=", 1)[1] for a in args if a.startswith("name=")), "default")
