"""Finding, checking and consolidating checkpoints.

A checkpoint is a file (single-device, DDP, FSDP with full state dicts) or a directory of
per-rank shards (FSDP and FSDP2 sharded state dicts: torch.distributed.checkpoint files; DeepSpeed
ZeRO: a `checkpoint/` folder and a `latest` tag). `consolidate` turns any of them into one
Lightning-format file with the full model weights, loadable on one device for evaluation,
prediction or fine-tuning.

Checkpoint files are written atomically (AtomicCheckpointIO): a process killed while writing one
leaves the previous file whole, so a restarted job always finds a loadable last.ckpt.

Checkpoints are data, never code: every file is unpickled with `weights_only=True` (tensors,
plain values and the few classes in SAFE_GLOBALS), and `verify` refuses, before Lightning,
DeepSpeed or torch.distributed.checkpoint unpickle anything (they use plain pickle for parts of
sharded checkpoints), a checkpoint that needs more.
"""

import contextlib
import importlib
import io
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightdist.compat import DCP_METADATA_GLOBALS, WRAPPER_PREFIXES, dcp_item_location
from lightdist.errors import CheckpointError

CHECKPOINT_DIR = "checkpoints"
Kind = Literal["file", "fsdp", "deepspeed"]

# Beyond torch's weights-only defaults (tensors, dtypes, containers, plain values): what the
# checkpoints of this project's runs hold, found by loading real ones with weights_only=True.
# Lightning files (single device, DDP, FSDP's meta.pt) need nothing more; DeepSpeed's optimizer
# shards keep its loss scaler (the dynamic one under fp16) and the ZeRO stage; ZeRO-1/2 shards also
# keep each parameter's fragment address (a dataclass of two ints: start, numel).
SAFE_GLOBALS: dict[Kind, tuple[str, ...]] = {
    "file": (),
    "fsdp": (),
    "deepspeed": ("deepspeed.runtime.fp16.loss_scaler.LossScaler",
                  "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
                  "deepspeed.runtime.zero.config.ZeroStageEnum",
                  "deepspeed.utils.tensor_fragment.fragment_address"),
}


class UnsafeCheckpoint(CheckpointError):
    """A checkpoint whose unpickling needs a global outside the allow-list (it could run code)."""

    def __init__(self, file: Path | str, what: str, hint: str | None = None):
        super().__init__(f"{file} needs unpickling of {what} which is not allowed",
                         hint=hint or "checkpoints must hold tensors and plain values only, since unpickling "
                                      "anything else can run code; from a copy you trust, re-save the weights "
                                      "with torch.save(model.state_dict(), path)")


def _safe_globals(kind: Kind) -> list[Any]:
    objects = []
    for name in SAFE_GLOBALS[kind]:
        module, _, attr = name.rpartition(".")
        try:
            objects.append(getattr(importlib.import_module(module), attr))
        except ModuleNotFoundError:  # DeepSpeed not installed: its classes stay refused
            pass
    return objects


def refused_global(exc: pickle.UnpicklingError) -> str:
    """The global (or the reason) a weights-only load refused, from torch's message."""
    text = str(exc)
    found = re.search(r"GLOBAL (\S+)", text)
    if found:
        return found.group(1)
    reason = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    return f"an object the weights-only unpickler refuses ({(reason.group(1) if reason else text).strip()[:200]})"


def load_file(file: Path | str | io.BytesIO, kind: Kind = "file", label: Path | str | None = None,
              mmap: bool = False) -> Any:
    """torch.load(weights_only=True) with the allow-list of `kind`; a file that needs more is an UnsafeCheckpoint."""
    label = label or file
    try:
        with torch.serialization.safe_globals(_safe_globals(kind)):
            return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpoint(label, refused_global(exc)) from None


class _Refused(Exception):
    pass


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if not dtype and name not in DCP_METADATA_GLOBALS.get(module, ()):
            raise _Refused(f"{module}.{name}")
        return super().find_class(module, name)


def _read_dcp_metadata(path: Path) -> Any:
    file = path / ".metadata"
    try:
        with open(file, "rb") as f:
            return _MetadataUnpickler(f).load()
    except _Refused as exc:
        raise UnsafeCheckpoint(file, str(exc)) from None
    except Exception as exc:
        raise CheckpointError(f"cannot read {file} ({type(exc).__name__}: {exc})",
                              hint="is the checkpoint complete?") from exc


def _verify_fsdp(path: Path) -> None:
    """`.metadata` (plain pickle), meta.pt, and the non-tensor items of the shards (torch.distributed.checkpoint
    loads those with weights_only=False; tensors it loads weights-only itself)."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    metadata = _read_dcp_metadata(path)
    if (path / "meta.pt").is_file():
        load_file(path / "meta.pt", "fsdp", mmap=True)
    for fqn, item in metadata.state_dict_metadata.items():
        if not isinstance(item, BytesStorageMetadata):
            continue
        relative_path, offset, length, transforms = dcp_item_location(metadata, fqn)
        label = f"{path / relative_path} (item {fqn})"
        if transforms:
            raise UnsafeCheckpoint(label, f"an item stored through {transforms}")
        with open(path / relative_path, "rb") as f:
            f.seek(offset)
            load_file(io.BytesIO(f.read(length)), "fsdp", label)


def _verify_deepspeed(path: Path) -> None:
    """Every .pt file DeepSpeed may read: those of the tag that `latest` names, and the rest of the directory."""
    tag = (path / "latest").read_text().strip()
    files = set(path.rglob("*.pt"))
    if (path / tag).is_dir():
        files |= set((path / tag).rglob("*.pt"))
    for file in sorted(files):
        if not zipfile.is_zipfile(file):
            raise CheckpointError(f"{file} is not a readable PyTorch file (corrupt or truncated)")
        load_file(file, "deepspeed", mmap=True)


def verify(path: str | Path) -> Kind:
    """Check that everything `path` holds unpickles with weights_only=True (memory-mapped: tensor data
    is not read); raises UnsafeCheckpoint otherwise. Returns the checkpoint's kind."""
    path = Path(path)
    kind = checkpoint_kind(path)
    try:
        if kind == "file":
            load_file(path, mmap=True)
        elif kind == "fsdp":
            _verify_fsdp(path)
        else:
            _verify_deepspeed(path)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot read {kind} checkpoint {path} ({type(exc).__name__}: {exc})",
                              hint="is it complete? a checkpoint interrupted while being written is unusable") from exc
    return kind


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
        if (path / "latest_universal").is_file():  # written by lightdist.distributed.zero_universal
            raise CheckpointError(f"{path} is the universal form of a DeepSpeed checkpoint, not one to pass",
                                  hint=f"pass {path.name.removesuffix('.universal')}, the checkpoint it was made "
                                       "from: a resume at another world size uses this form by itself")
        raise CheckpointError(f"{path} is a directory but neither an FSDP nor a DeepSpeed sharded checkpoint",
                              hint="point at a .ckpt file or a checkpoint directory written by a sharded strategy")
    raise CheckpointError(f"checkpoint {path} does not exist", hint="pass ckpt_path=last or an existing .ckpt")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's file checkpoints, written beside their final name, synced, then renamed into place.

    Lightning writes a file in the system's temporary directory and moves it: a rename only when
    that directory is on the checkpoint's filesystem. On a cluster it rarely is (local /tmp, runs
    on a shared filesystem), and the move copies into the final name, where a kill -9 or a node
    failure leaves a truncated last.ckpt in place of the previous one. Remote URLs keep Lightning's way.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")  # one writer per file; a leftover is overwritten next time
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())  # the data is on disk before the name points at it
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newer of last.ckpt (every epoch end, and every checkpoint.every_n_steps steps or
    checkpoint.every_minutes minutes when set) and preempted.ckpt (saved on a preemption signal)."""
    candidates = [p for p in (run_dir / CHECKPOINT_DIR / "last.ckpt", run_dir / CHECKPOINT_DIR / "preempted.ckpt")
                  if p.exists()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def is_restart() -> bool:
    """This process may belong to a job that the scheduler started again (requeue, elastic restart).

    Under torchrun always: its run directory belongs to the job (named by the rendezvous id, or
    agreed through the agent's store, which outlives restarts), so a checkpoint there was written by
    an earlier attempt. TORCHELASTIC_RESTART_COUNT cannot tell: an agent whose ranks are healthy
    restarts them without counting when another node re-joins, and every rank must decide alike.
    """
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0 or "TORCHELASTIC_RUN_ID" in os.environ


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """What to resume from.

    - None: nothing, unless the job itself was restarted (SLURM requeue) or runs under torchrun
      (an elastic restart): then the run directory's latest checkpoint, if it has one.
    - `last`: the run directory's latest checkpoint (last.ckpt or preempted.ckpt, newer first).
    - a path: must exist and be a readable checkpoint (file or sharded directory).

    Whatever is returned has passed `verify`.
    """
    if ckpt_path in (None, ""):
        latest = latest_checkpoint(run_dir) if is_restart() else None
        if latest:
            verify(latest)
        return str(latest) if latest else None
    if ckpt_path == "last":
        latest = latest_checkpoint(run_dir)
        if latest is None:
            raise CheckpointError(f"ckpt_path=last but {run_dir / CHECKPOINT_DIR} holds no last.ckpt",
                                  hint="resume inside an existing run with run_dir=<that run's directory>")
        verify(latest)
        return str(latest)
    path = Path(ckpt_path).expanduser()
    verify(path)  # Lightning, DeepSpeed and torch.distributed.checkpoint load it next: refuse before
    return str(path.resolve())


def _strip(key: str, prefixes: tuple[str, ...] = WRAPPER_PREFIXES) -> str:
    for prefix in prefixes:
        key = key.replace(prefix, "")
    return key


def strip_wrappers(state: dict[str, Any]) -> dict[str, Any]:
    """State-dict keys without the names that strategy wrappers (DDP, FSDP) insert."""
    return {_strip(k): v for k, v in state.items()}


def _load_fsdp(path: Path) -> dict[str, Any]:
    """torch.distributed.checkpoint shards -> one dict, with Lightning's metadata file (meta.pt) merged in."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    _verify_fsdp(path)  # dcp_to_torch_save unpickles the metadata and non-tensor items without restriction
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "merged.pt"
        dcp_to_torch_save(path, merged)
        state = load_file(merged, "fsdp", label=path)
    meta = path / "meta.pt"
    checkpoint = load_file(meta, "fsdp") if meta.is_file() else {}
    # Lightning's FSDPStrategy keys the weights "model"; ModelParallelStrategy (FSDP2, lightdist.distributed.dcp)
    # "state_dict". DCP has already gathered DTensor shards into full tensors.
    checkpoint["state_dict"] = strip_wrappers(state["model"] if "model" in state else state["state_dict"])
    return checkpoint


def _load_deepspeed(path: Path) -> dict[str, Any]:
    """ZeRO shards -> fp32 weights with Lightning's client state kept: Lightning's own conversion
    (DeepSpeed's zero_to_fp32, plus rank 0's model-state file), less DeepSpeed's bookkeeping."""
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    _verify_deepspeed(path)  # the conversion loads the shards with weights_only=False
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):  # its "Saving ..." line
        client = convert_zero_checkpoint_to_fp32_state_dict(str(path), Path(tmp) / "fp32.ckpt")
    bookkeeping = {"buffer_names", "param_shapes", "frozen_param_shapes", "shared_params", "frozen_param_fragments",
                   "ds_config", "ds_version", "global_samples", "data_sampler", "random_ltd",
                   "checkpoint_parallel_dimensions", "sparse_tensor_module_names"}
    checkpoint = {k: v for k, v in client.items() if k not in bookkeeping}
    checkpoint["state_dict"] = strip_wrappers(checkpoint["state_dict"])
    return checkpoint


def load_consolidated(path: str | Path) -> dict[str, Any]:
    """Any checkpoint as one Lightning-format dict: full `state_dict` plus epoch, global_step, hyper_parameters...

    Optimizer states are left out of sharded checkpoints (they only make sense sharded as saved).
    """
    path = Path(path)
    kind = checkpoint_kind(path)
    try:
        if kind == "file":
            checkpoint = load_file(path)
            checkpoint["state_dict"] = strip_wrappers(checkpoint["state_dict"])
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
