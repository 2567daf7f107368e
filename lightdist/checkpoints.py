"""Finding, checking and consolidating checkpoints.

A checkpoint is a file (single-device, DDP, FSDP with full state dicts) or a directory of
per-rank shards (FSDP sharded state dicts: torch.distributed.checkpoint files; DeepSpeed
ZeRO: a `checkpoint/` folder and a `latest` tag). `consolidate` turns any of them into one
Lightning-format file with the full model weights, loadable on one device for evaluation,
prediction or fine-tuning.
"""

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch

from lightdist.errors import CheckpointError

CHECKPOINT_DIR = "checkpoints"
Kind = Literal["file", "fsdp", "deepspeed"]


def checkpoint_kind(path: Path) -> Kind:
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"checkpoint {path} is not a readable PyTorch checkpoint (corrupt or truncated)",
                                  hint="pick another checkpoint, e.g. ckpt_path=last")
        return "file"
    if path.is_dir():
        if (path / ".metadata").is_file():
            return "fsdp"
        if (path / "latest").is_file() and (path / "checkpoint").is_dir():
            return "deepspeed"
        raise CheckpointError(f"{path} is a directory but neither an FSDP nor a DeepSpeed sharded checkpoint",
                              hint="point at a .ckpt file or a checkpoint directory written by a sharded strategy")
    raise CheckpointError(f"checkpoint {path} does not exist", hint="pass ckpt_path=last or an existing .ckpt")


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newer of last.ckpt (every epoch end) and preempted.ckpt (saved on a preemption signal)."""
    candidates = [p for p in (run_dir / CHECKPOINT_DIR / "last.ckpt", run_dir / CHECKPOINT_DIR / "preempted.ckpt")
                  if p.exists()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def is_restart() -> bool:
    """This process belongs to a job that the scheduler started again (requeue, elastic restart)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0 or int(
        os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """What to resume from.

    - None: nothing, unless the job itself was restarted (SLURM requeue, torchrun restart):
      then the run directory's latest checkpoint, if it has one.
    - `last`: the run directory's latest checkpoint (last.ckpt or preempted.ckpt, newer first).
    - a path: must exist and be a readable checkpoint (file or sharded directory).
    """
    if ckpt_path in (None, ""):
        latest = latest_checkpoint(run_dir) if is_restart() else None
        return str(latest) if latest else None
    if ckpt_path == "last":
        latest = latest_checkpoint(run_dir)
        if latest is None:
            raise CheckpointError(f"ckpt_path=last but {run_dir / CHECKPOINT_DIR} holds no last.ckpt",
                                  hint="resume inside an existing run with run_dir=<that run's directory>")
        return str(latest)
    path = Path(ckpt_path).expanduser()
    checkpoint_kind(path)
    return str(path.resolve())


def _strip(key: str, prefixes: tuple[str, ...] = ("_forward_module.", "_fsdp_wrapped_module.")) -> str:
    for prefix in prefixes:
        key = key.replace(prefix, "")
    return key


def _load_fsdp(path: Path) -> dict[str, Any]:
    """torch.distributed.checkpoint shards -> one dict, with Lightning's metadata file (meta.pt) merged in."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "merged.pt"
        dcp_to_torch_save(path, merged)
        state = torch.load(merged, map_location="cpu", weights_only=False)
    meta = path / "meta.pt"
    checkpoint = torch.load(meta, map_location="cpu", weights_only=False) if meta.is_file() else {}
    checkpoint["state_dict"] = {_strip(k): v for k, v in state["model"].items()}
    return checkpoint


def _load_deepspeed(path: Path) -> dict[str, Any]:
    """ZeRO shards -> fp32 weights (DeepSpeed's own zero_to_fp32), with Lightning's client state kept."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    weights = get_fp32_state_dict_from_zero_checkpoint(str(path))
    model_files = sorted((path / "checkpoint").glob("*model_states.pt"))
    client = torch.load(model_files[0], map_location="cpu", weights_only=False) if model_files else {}
    internal = {"module", "optimizer", "lr_scheduler", "csr_tensor_module_names", "skipped_steps", "global_steps",
                "dp_world_size", "mp_world_size", "buffer_names", "param_shapes", "frozen_param_shapes",
                "shared_params", "frozen_param_fragments", "ds_config", "ds_version"}
    checkpoint = {k: v for k, v in client.items() if k not in internal}
    checkpoint["state_dict"] = {_strip(k): v for k, v in weights.items()}
    return checkpoint


def load_consolidated(path: str | Path) -> dict[str, Any]:
    """Any checkpoint as one Lightning-format dict: full `state_dict` plus epoch, global_step, hyper_parameters...

    Optimizer states are left out of sharded checkpoints (they only make sense sharded as saved).
    """
    path = Path(path)
    kind = checkpoint_kind(path)
    try:
        if kind == "file":
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
            checkpoint["state_dict"] = {_strip(k): v for k, v in checkpoint["state_dict"].items()}
            return checkpoint
        return _load_fsdp(path) if kind == "fsdp" else _load_deepspeed(path)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot read {kind} checkpoint {path} ({type(exc).__name__}: {exc})",
                              hint="is it complete? a checkpoint interrupted while being written is unusable") from exc


def consolidate(path: str | Path, output: str | Path | None = None) -> Path:
    """Write `load_consolidated(path)` to one file (default: <path>.consolidated.ckpt); never overwrites."""
    path = Path(path)
    output = Path(output) if output else path.with_name(path.name.removesuffix(".ckpt") + ".consolidated.ckpt")
    if output.exists():
        raise CheckpointError(f"{output} already exists", hint="choose another output path or remove it first")
    checkpoint = load_consolidated(path)
    for key in [k for k in checkpoint if k.startswith("optimizer") or k == "lr_schedulers"]:
        checkpoint.pop(key)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(output)
    return output
