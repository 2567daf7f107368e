"""Run the CLI in a subprocess, exactly as a user would, and read what a run wrote.

End-to-end tests never run Lightning's DDP launcher inside pytest (it re-executes the
command line for ranks > 0, which would re-run pytest): they start the CLI in a
subprocess, in a temporary working directory.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Options that keep end-to-end runs small and quiet; tests add what they exercise.
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment (LIGHTDIST_DATA included: the generated data during a test session)
    without what would make the CLI think it runs under a launcher, a cluster or an online logger."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # halves `import lightning` time in every subprocess
    env["WANDB_MODE"] = "offline"
    env.pop("WANDB_API_KEY", None)
    for name in ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS", "LOCAL_RANK", "RANK", "WORLD_SIZE",
                 "LIGHTDIST_JOB_CONFIG", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    env.update(extra)
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = 300, check: bool = True, env: dict | None = None,
            module: str = "lightdist") -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"lightdist {' '.join(args)} exited {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def run_dirs(cwd: Path, name: str = "default") -> list[Path]:
    """Run directories (those holding a config.yaml) under cwd/outputs/<name>/."""
    return sorted(p.parent for p in (cwd / "outputs" / name).rglob("config.yaml") if p.parent.name != ".hydra")


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def stop_processes(processes: list[subprocess.Popen], logs: list) -> None:
    """Kill what a test started and is still running (a test that failed half-way), close their logs."""
    for process in processes:
        if process.poll() is None:
            process.kill()
    for log in logs:
        log.close()
