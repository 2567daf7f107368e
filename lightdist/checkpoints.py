"""Finding and checking the checkpoint a run resumes from."""

import zipfile
from pathlib import Path

from lightdist.errors import CheckpointError

CHECKPOINT_DIR = "checkpoints"


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """`last`: the run directory's last.ckpt; a path: must exist and be a readable checkpoint."""
    if ckpt_path in (None, ""):
        return None
    if ckpt_path == "last":
        path = run_dir / CHECKPOINT_DIR / "last.ckpt"
        if not path.exists():
            raise CheckpointError(f"ckpt_path=last but {path} does not exist",
                                  hint="resume inside an existing run with run_dir=<that run's directory>")
        return str(path)
    path = Path(ckpt_path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist", hint="pass ckpt_path=last or an existing .ckpt")
    if path.is_file() and not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is not a readable PyTorch checkpoint (corrupt or truncated)",
                              hint="pick another checkpoint, e.g. ckpt_path=last")
    return str(path.resolve())
