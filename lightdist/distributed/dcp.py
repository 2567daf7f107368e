"""Sharded checkpoints through torch.distributed.checkpoint (DCP): one shard per rank, written atomically,
in the background when asked.

The layout is Lightning's (ModelParallelStrategy, FSDP's sharded state dicts): a directory holding DCP's
`.metadata` and `.distcp` shards of {"state_dict": ..., "optimizer_0": ...}, and `meta.pt` with the rest
of the checkpoint (loops, callbacks, hyper-parameters), so Lightning loads it and DCP reshards it to the
world size of the run that loads it.

Atomic: the shards go to `<path>.partial` beside `path`; rank 0 adds meta.pt once DCP's save has returned
(DCP writes `.metadata` after every rank reported its shard written) and only then puts the directory in
place of `path`, so a kill at any point before leaves the previous checkpoint whole.

Async: the state is copied to host memory before `save_sharded` returns (training may then change the
parameters), the writing continues in a thread. At most one save is in flight: the next save, and
`wait_for_saves` (the strategy's teardown), wait for it. The thread's collectives run on a gloo group
of their own, so they never interleave with the training's collectives on the default group.
"""

import ctypes
import io
import os
import shutil
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

META_FILE = "meta.pt"  # Lightning's name for the non-tensor part of a sharded checkpoint

_pending: Future | None = None
_group: Any = None


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _checkpoint_group() -> Any:
    """A gloo group for the background thread's collectives (created once, by every rank together)."""
    global _group
    if _group is None and dist.is_available() and dist.is_initialized():
        _group = dist.new_group(backend="gloo")
    return _group


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # glibc >= 2.28
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _put_in_place(new: Path, path: Path) -> None:
    """`new` becomes `path`; an existing `path` (a sharded directory or a file) stays whole until then."""
    if not path.exists() and not path.is_symlink():
        os.rename(new, path)
    elif _exchange(new, path):
        _remove(new)  # now the previous checkpoint
    else:  # a filesystem without exchange (NFS): a short window in which only `<path>.old` exists
        old = path.with_name(path.name + ".old")
        _remove(old)
        os.rename(path, old)
        os.rename(new, path)
        _remove(old)
    _sync_dir(path.parent)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _serialized(metadata: dict) -> bytes:
    """meta.pt's bytes, taken when the save is called (an async save must not see later changes)."""
    buffer = io.BytesIO()
    torch.save(metadata, buffer)
    return buffer.getvalue()


def _finish(partial: Path, path: Path, meta: bytes | None) -> None:
    """Rank 0 (the one with `meta`), after DCP's save returned on it, so every rank's shard and
    `.metadata` are written: meta.pt, then the directory in place of `path`."""
    if meta is None:
        return
    with open(partial / META_FILE, "wb") as f:
        f.write(meta)
        f.flush()
        os.fsync(f.fileno())
    _put_in_place(partial, path)


def _await_then_finish(upload: Future, partial: Path, path: Path, meta: bytes | None, group: Any) -> None:
    try:
        upload.result()  # DCP raises on every rank alike: then no meta.pt, nothing renamed
        _finish(partial, path, meta)
    finally:  # every rank's save ends when the checkpoint is in place (or failed) on rank 0
        if group is not None:
            dist.barrier(group=group)


def save_sharded(state: dict[str, Any], metadata: dict[str, Any], path: Path | str, async_save: bool = False) -> None:
    """Every rank calls this with its shard of `state` (DTensors, or plain tensors where replicated) and the
    same `path`; `metadata` is what rank 0 writes to meta.pt. Returns once `path` is whole on every rank,
    or, with async_save, once the state is copied to host memory (`wait_for_saves` then finishes it)."""
    import torch.distributed.checkpoint as dcp  # half a second to import: only where a save happens

    global _pending
    wait_for_saves()
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    meta = _serialized(metadata) if _rank() == 0 else None
    if meta is not None:
        _remove(partial)  # what a killed save left
        partial.mkdir(parents=True)
    _barrier()
    if not async_save:
        dcp.save(state, checkpoint_id=partial)
        _finish(partial, path, meta)
        _barrier()
        return
    group = _checkpoint_group()
    upload = dcp.async_save(state, checkpoint_id=partial, process_group=group)
    done: Future = Future()

    def finish() -> None:
        try:
            _await_then_finish(upload, partial, path, meta, group)
            done.set_result(path)
        except BaseException as exc:  # handed to wait_for_saves
            done.set_exception(exc)

    threading.Thread(target=finish, name="lightdist-dcp-finish", daemon=True).start()
    _pending = done


def wait_for_saves() -> None:
    """Block until the save in flight (if any) is complete and in place; re-raises its error."""
    global _pending
    pending, _pending = _pending, None
    if pending is not None:
        pending.result()
