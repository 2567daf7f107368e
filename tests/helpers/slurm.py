"""Submit jobs to the real SLURM cluster of the tests (.ci/run starts one) and read what they left.

Shared by tests/distributed/test_slurm.py (one node) and test_slurm_multinode.py (two nodes).
"""

import csv
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.cli import cli_env

# A small run of the default image experiment.
TINY = ["data.train_subset=1000", "data.val_subset=200", "data.test_subset=200", "model.channels=[8,16]",
        "model.hidden=32", "data.batch_size=64", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false"]

# Ways a preemption reaches a job. The steps alone (#SBATCH --signal=USR1@N) is how the batch
# shell passes a signal on, so every case below goes through it as well.
PREEMPT = {
    # the batch shell and its process group: the shell must survive and pass it on
    "usr1-full": ["scancel", "--signal=USR1", "--full"],
    # the batch shell alone, as #SBATCH --signal=B:USR1@N does
    "usr1-batch-only": ["scancel", "--signal=USR1", "--batch"],
    # SIGTERM to the batch shell's group: srun must not get it (it kills its tasks at once)
    "term-full": ["scancel", "--signal=TERM", "--full"],
    # what preemption with PreemptMode=REQUEUE does: SIGTERM to everything, SIGKILL KillWait later
    "scontrol-requeue": ["scontrol", "requeue"],
}


def slurm_env(**extra: str) -> dict[str, str]:
    env = cli_env(LIGHTDIST_PYTHON=sys.executable, **extra)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


def require_slurm() -> None:
    if shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed (no sbatch on PATH); .ci/run installs and starts it")
    probe = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    assert probe.returncode == 0 and probe.stdout.strip(), \
        f"SLURM is installed but its controller does not answer: {probe.stderr.strip()}"


def usable_nodes() -> list[str]:
    """Nodes of the cluster that can take jobs (not down, drained or failing)."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=30).stdout
    states = dict(line.split() for line in out.splitlines() if line.strip())
    return sorted(n for n, s in states.items() if not re.match(r"(down|drain|fail|unk)", s.rstrip("*~#$@")))


def submit(args: list[str], cwd: Path, **env: str) -> str:
    out = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env=slurm_env(**env), capture_output=True,
                         text=True, check=True).stdout.strip()
    return out.split(";")[0]


def job_state(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


def gone(squeue: subprocess.CompletedProcess) -> bool:
    """squeue -j says the job left the queue. It also answers non-zero when slurmctld is too busy
    to reply (a loaded machine): that means ask again, not gone."""
    return (squeue.returncode == 0 and not squeue.stdout.strip()) or "Invalid job id" in squeue.stderr


def wait_for(job: str, timeout: float = 300) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
        if gone(queued):
            return job_state(job)
        time.sleep(1)
    subprocess.run(["scancel", job])
    raise AssertionError(f"job {job} still queued/running after {timeout} s: {job_state(job)}")


def log_of(cwd: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(cwd.glob("slurm-*.out")))


def train_loss_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


def segments_of(run_dir: Path) -> list[dict]:
    try:
        return json.loads((run_dir / "run.json").read_text())["segments"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return []


def preempt_after_a_checkpoint(job: str, run_dir: Path, segment: int, command: list[str], workdir: Path) -> None:
    """Signal once segment `segment` (0: first run, 1: first restart...) has saved a checkpoint:
    genuinely mid-run, with earlier checkpoints that resuming must not fall back to."""
    deadline = time.time() + 240
    while True:
        segments = segments_of(run_dir)
        if len(segments) > segment and segments[segment].get("last_checkpoint_step"):
            break
        queued = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True)
        if time.time() > deadline or gone(queued):
            raise AssertionError(f"segment {segment} never reached a checkpoint ({job_state(job)}):\n"
                                 f"{log_of(workdir)[-3000:]}")
        time.sleep(0.5)
    subprocess.run([*command, job], check=True)
