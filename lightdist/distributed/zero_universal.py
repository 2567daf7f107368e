"""Resuming a DeepSpeed ZeRO checkpoint at another world size, through DeepSpeed's universal checkpoint.

A ZeRO checkpoint keeps each rank's slice of the flat fp32 weights and optimizer moments, cut for
the world size it was saved at, and DeepSpeed refuses to load it at any other. DeepSpeed's
universal checkpoint (deepspeed.checkpoint.ds_to_universal) stores the same state whole, one
folder per parameter, and an engine with `checkpoint.load_universal` slices it for its own ranks.

Lightning's DeepSpeed checkpoints are directories `<name>/latest` + `<name>/checkpoint/`; the
universal form of one is the sibling `<name>.universal/` (`latest_universal` + `checkpoint/`),
written once, atomically, and reused while the checkpoint it came from is unchanged.
"""

import contextlib
import io
import json
import logging
import os
import shutil
from argparse import Namespace
from pathlib import Path
from typing import Any

from lightdist.checkpoints import checkpoint_kind, load_file, verify
from lightdist.compat import load_universal_next
from lightdist.errors import CheckpointError

log = logging.getLogger(__name__)

SUFFIX = ".universal"
LATEST = "latest_universal"  # the tag file DeepSpeed reads with load_universal
SOURCE = "source.json"  # which checkpoint files (size, mtime) a universal directory was made from


def universal_dir(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def _tag_dir(path: Path) -> Path:
    return path / (path / "latest").read_text().strip()


def saved_world_size(path: str | Path) -> int:
    """The data-parallel world size a ZeRO checkpoint directory was saved with."""
    files = sorted(_tag_dir(Path(path)).glob("*model_states.pt"))
    if not files:
        raise CheckpointError(f"{path} has no DeepSpeed model-state file", hint="is the checkpoint complete?")
    return int(load_file(files[0], "deepspeed", mmap=True)["dp_world_size"])


def _fingerprint(path: Path) -> dict[str, list[int]]:
    return {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(_tag_dir(path).glob("*.pt"))}


def _is_current(output: Path, source: Path) -> bool:
    try:
        return (output / LATEST).is_file() and json.loads((output / SOURCE).read_text()) == _fingerprint(source)
    except (OSError, ValueError):
        return False


def convert_to_universal(path: str | Path, output: str | Path | None = None) -> Path:
    """The universal form of ZeRO checkpoint `path` in `output` (default: the sibling <path>.universal).

    An output already made from this very checkpoint is kept as it is; an older one is replaced.
    The conversion writes into a temporary directory beside `output`, renamed into place at the end.
    """
    path = Path(path)
    if checkpoint_kind(path) != "deepspeed":
        raise CheckpointError(f"{path} is not a DeepSpeed ZeRO checkpoint directory",
                              hint="to=universal converts the checkpoint directory of a strategy=deepspeed_* run")
    verify(path)  # DeepSpeed's converter unpickles the shards without restriction
    # The converter counts ranks by the files it finds: with one missing it would quietly drop that
    # rank's optimizer state.
    saved, shards = saved_world_size(path), len(list(_tag_dir(path).glob("*optim_states.pt")))
    if shards != saved:
        raise CheckpointError(f"DeepSpeed checkpoint {path} was saved by {saved} processes but holds {shards} "
                              "optimizer shards", hint="the checkpoint is incomplete; pick another one")
    output = Path(output) if output else universal_dir(path)
    if _is_current(output, path):
        return output
    tmp = output.with_name(f"{output.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tag = _tag_dir(path).name
    args = Namespace(input_folder=str(path / tag), output_folder=str(tmp / tag), strict=True,
                     inject_missing_state=True,  # Lightning's checkpoints lack the version marker it checks for
                     num_extract_workers=1, num_merge_workers=1,  # no process pool inside a training process
                     keep_temp_folder=False)
    try:
        from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its progress
            ds_to_universal(args)
        (tmp / SOURCE).write_text(json.dumps(_fingerprint(path)))
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot convert DeepSpeed checkpoint {path} to a universal checkpoint "
                              f"({type(exc).__name__}: {exc})",
                              hint=f"resume it with {saved} processes, as it was saved, or pick another checkpoint"
                              ) from exc
    shutil.rmtree(output, ignore_errors=True)
    os.replace(tmp, output)
    return output


class UniversalResume:
    """DeepSpeedStrategy mixin: a ZeRO checkpoint saved at another world size is resumed from its
    universal form (rank 0 converts it, once, while the other ranks wait); at the same world size
    DeepSpeed loads the checkpoint as it is. Saving or removing a checkpoint removes its universal
    form, which no longer matches it."""

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(checkpoint_path)
        full_file = getattr(self, "load_full_weights", False) and getattr(self, "zero_stage_3", False)
        if not full_file and path.is_dir() and (path / "latest").is_file():
            saved = saved_world_size(path)
            if saved != self.world_size:
                checkpoint_path = self._to_universal(path, saved)
        return super().load_checkpoint(checkpoint_path, weights_only)  # type: ignore[misc]

    def _to_universal(self, path: Path, saved: int) -> Path:
        error, failure = None, None
        if self.is_global_zero:
            try:
                output = convert_to_universal(path)
                log.info("DeepSpeed checkpoint %s was saved by %d processes, this run has %d: resuming from "
                         "its universal form %s", path, saved, self.world_size, output)
            except Exception as exc:
                error = exc
                failure = ((exc.message, exc.hint) if isinstance(exc, CheckpointError) else
                           (f"converting {path} to a universal checkpoint failed on rank 0", None))
        failure = self.broadcast(failure)  # every rank fails alike, none waits for a rank that gave up
        if error is not None:
            raise error  # rank 0's own, with its traceback if it is a bug
        if failure:
            raise CheckpointError(*failure)
        load_universal_next(self.deepspeed_engine)
        return universal_dir(path)

    def save_checkpoint(self, checkpoint: dict, filepath: Any, storage_options: Any | None = None) -> None:
        super().save_checkpoint(checkpoint, filepath, storage_options)  # type: ignore[misc]
        self._drop_universal(filepath)  # made from the checkpoint just replaced

    def remove_checkpoint(self, filepath: Any) -> None:
        super().remove_checkpoint(filepath)  # type: ignore[misc]
        self._drop_universal(filepath)

    def _drop_universal(self, filepath: Any) -> None:
        if self.is_global_zero:
            shutil.rmtree(universal_dir(Path(filepath)), ignore_errors=True)
