"""The run directory: what rank 0 writes so that a run can be understood, reproduced and resumed.

    <run_dir>/
      .hydra/                 Hydra's composed config, hydra config and overrides
      config.yaml             the fully resolved config the job ran (ranks > 0 read it)
      run.json                command, git revision, versions, world size, one entry per segment
      checkpoints/            best-by-monitor and last.ckpt
      metrics.csv             CSV logger (tensorboard/, wandb/ when selected)
      summary.json            final test metrics and where the best checkpoint is (or where it diverged)
      confusion_matrix.png    test confusion matrix with class names
      learning_curves.png     loss and the monitored metric per epoch
      eval/<id>_<split>/      one folder per `lightdist eval` (report.json, report.md, figures)
"""

import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"

_PACKAGES = ("torch", "lightning", "hydra-core", "omegaconf", "torchmetrics", "deepspeed", "wandb", "kornia",
             "tokenizers", "numpy", "lightdist")


def write_json(path: Path, data: Any) -> None:
    """Write through a temporary file so that a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def git_revision(directory: str) -> dict[str, Any] | None:
    try:
        rev = subprocess.run(["git", "-C", directory, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", directory, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return {"repo": directory, "commit": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return None


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def save_config(run_dir: Path, cfg: DictConfig) -> Path:
    path = run_dir / CONFIG_FILE
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    OmegaConf.save(cfg, tmp)
    tmp.replace(path)
    return path


def load_config(path: Path) -> DictConfig:
    return OmegaConf.load(path)


def start_segment(run_dir: Path, world_size: int) -> None:
    """Record who started this segment of the run (a run resumed or requeued has several)."""
    path = run_dir / RUN_FILE
    record = read_json(path)
    if not record:
        package_dir = str(Path(__file__).resolve().parents[1])
        record = {
            "command": sys.argv,
            "cwd": os.getcwd(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "git": {"cwd": git_revision(os.getcwd()), "lightdist": git_revision(package_dir)},
            "segments": [],
        }
    record["versions"] = versions()
    record["segments"].append({
        "started": time.time(),
        "host": socket.gethostname(),
        "world_size": world_size,
        "argv": sys.argv[1:],
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        # torchrun --max-restarts: how often rank 0's agent restarted its ranks (not always counted when
        # another node failed: segments with resumed_from say what a segment continued)
        "torchrun_restart_count": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
    })
    write_json(path, record)


def update_segment(run_dir: Path, **fields: Any) -> None:
    """Set fields of the current (last) segment."""
    path = run_dir / RUN_FILE
    record = read_json(path)
    if record.get("segments"):
        record["segments"][-1].update(fields)
        write_json(path, record)


def end_segment(run_dir: Path, **fields: Any) -> None:
    record = read_json(run_dir / RUN_FILE)
    if record.get("segments"):
        ended = time.time()
        update_segment(run_dir, ended=ended, wall_time_s=round(ended - record["segments"][-1]["started"], 3),
                       **fields)


def shown_path(path: str | Path) -> str:
    """A path as a user would type it: relative to the working directory when below it, shell-quoted."""
    path = Path(path).resolve()
    try:
        path = path.relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.quote(str(path))


def describe(summary: dict[str, Any], next_commands: list[str]) -> str:
    """The few lines printed at the end of a run: its result, where it is, what to run next."""
    ended = "was preempted" if summary.get("preempted") else "was interrupted" if summary.get("interrupted") \
        else "finished"
    lines = [f"Run {ended} after {summary.get('epochs')} epoch(s), {summary.get('global_step')} step(s), "
             f"{summary.get('wall_time_s')} s."]
    rows = []
    if summary.get("test"):
        what = "best checkpoint" if summary.get("best_checkpoint") else "last weights"
        rows.append((f"test ({what})", "  ".join(f"{k} {v:.4g}" for k, v in sorted(summary["test"].items()))))
    rows.append(("run directory", shown_path(summary["run_dir"])))
    if summary.get("best_checkpoint"):
        score = summary.get("best_score")
        rows.append(("best checkpoint", shown_path(summary["best_checkpoint"])
                     + (f"  ({summary.get('monitor')} {score:.4g})" if score is not None else "")))
    rows += [("next" if i == 0 else "", command) for i, command in enumerate(next_commands)]
    width = max(len(label) for label, _ in rows)
    return "\n".join(lines + [f"  {label:<{width}}  {value}" for label, value in rows])
