"""Logger construction that Lightning leaves to the user: wandb that never blocks on a login."""

import hashlib
import netrc
import os
from pathlib import Path
from typing import Literal

from lightning.pytorch.loggers import WandbLogger


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
