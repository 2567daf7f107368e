"""Logger construction that Lightning leaves to the user: wandb that never blocks on a login."""

import csv
import hashlib
import netrc
import os
from pathlib import Path
from typing import Literal

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightdist.compat import KeepMetricsFile, lazy_experiment


def wandb_credentials_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def run_key(run_dir: str | Path) -> str:
    """A stable id for the run directory: a requeued or resumed job continues the same logger run."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def wandb(
    save_dir: str,
    project: str = "lightdist",
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    entity: str | None = None,
    mode: Literal["auto", "online", "offline", "disabled"] = "auto",
    log_model: bool = False,
) -> WandbLogger:
    """WandbLogger, offline unless credentials exist (offline never prompts for a login).

    The run id is derived from the run directory, so every segment of a requeued or
    resumed run logs into one wandb run.
    """
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_credentials_available() else "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(
        save_dir=save_dir,
        project=project,
        name=name,
        group=group,
        tags=list(tags) if tags else None,
        entity=entity,
        id=run_key(save_dir),
        resume="allow",
        offline=mode == "offline",
        log_model=log_model,
        **({"mode": "disabled"} if mode == "disabled" else {}),
    )


def finish_wandb() -> None:
    """End the process's wandb run: the next job of a multirun must not log into this one."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def _write_rows(fs, path: str, fieldnames: list[str], rows: list[dict]) -> None:
    with fs.open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


def _read_rows(fs, path: str) -> tuple[list[str], list[dict]]:
    with fs.open(path, "r", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


class _ContinuingWriter(KeepMetricsFile, ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv and forgets its columns; this one continues it."""

    def continue_file(self) -> None:
        self.fs = get_filesystem(self.log_dir)
        if self.fs.isfile(self.metrics_file_path):
            self.metrics_keys = _read_rows(self.fs, self.metrics_file_path)[0]

    def save(self) -> None:
        # Under ddp_spawn and ddp_fork each stage (fit, then test) runs in new processes holding a
        # copy of the main process's writer: the file may have columns that copy never saw.
        if self.fs.isfile(self.metrics_file_path):
            file_keys, rows = _read_rows(self.fs, self.metrics_file_path)
            if file_keys != self.metrics_keys:
                extra = [k for k in self.metrics_keys if k not in file_keys]
                self.metrics_keys = file_keys + extra
                if extra:
                    _write_rows(self.fs, self.metrics_file_path, self.metrics_keys, rows)
        super().save()

    def drop_rows_from(self, step: int) -> int:
        """Remove rows logged at `step` or later (they will be logged again); returns how many."""
        if not self.fs.isfile(self.metrics_file_path):
            return 0
        fieldnames, rows = _read_rows(self.fs, self.metrics_file_path)
        kept = [r for r in rows if not r.get("step") or int(float(r["step"])) < step]
        if len(kept) != len(rows):
            _write_rows(self.fs, self.metrics_file_path, fieldnames, kept)
        return len(rows) - len(kept)


class ContinuingCSVLogger(CSVLogger):
    """CSVLogger whose metrics.csv survives resuming: each step appears exactly once.

    Hand-written because Lightning's CSVLogger starts a new file on every run. Here a
    resumed or requeued run keeps the rows up to the checkpoint it resumes from and drops
    the ones logged after it (they are logged again): the first step the resumed run logs
    is where the old rows are cut, so no guess about Lightning's step counters is needed.
    Every checkpoint flushes the buffered rows, so a crash after a checkpoint loses no rows
    before it.
    """

    _cut_at_next_step = False

    @property
    @rank_zero_experiment
    def experiment(self) -> _ContinuingWriter:
        return lazy_experiment(self, lambda: _ContinuingWriter(log_dir=self.log_dir))

    def resumed(self) -> None:
        """Training continues from a checkpoint: rows from the next logged step on are stale."""
        self._cut_at_next_step = True

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if self._cut_at_next_step and step is not None:
            self._cut_at_next_step = False
            self.experiment.metrics = [m for m in self.experiment.metrics if m.get("step", 0) < step]
            self.experiment.drop_rows_from(step)
        super().log_metrics(metrics, step)

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self.save()
