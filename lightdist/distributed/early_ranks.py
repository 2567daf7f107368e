"""Ranks > 0 of a single-node run started early, so that their imports overlap rank 0's.

Lightning's `ddp` launcher starts ranks > 0 only when rank 0 reaches `trainer.fit`; each then
spends seconds importing torch and Lightning before the process group can form. Instead, rank 0
starts one process per local rank as soon as its config is composed (`start`), before the checks
that import those same libraries; each imports what a rank imports (`wait_for_handoff`) and waits. When Lightning's launcher starts
its children, the start of each is replaced by a hand-off (`hand_off_to`): the environment
Lightning would have given the child is written to <dir>/rank<k>.json, and the waiting process,
already a real Popen, is what the launcher keeps in its `procs`. The child takes that environment
and continues as a child Lightning started (it finds LOCAL_RANK and the job config in it).

A child runs no job it was not handed: rank 0 cancels the children it did not hand off at exit
or when the job's launcher is not one that starts scripts. Children never run Hydra. Variables
read when torch or Lightning is imported are those of the command (the children import them
before rank 0's changes to the environment reach them).

LIGHTDIST_EARLY_RANKS=0 turns this off: the children are started by Lightning, at fit.
"""

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HANDOFF_ENV = "LIGHTDIST_EARLY_HANDOFF"  # the hand-off folder, in a waiting child's environment
RANK_ENV = "LIGHTDIST_EARLY_RANK"  # its local rank
SWITCH_ENV = "LIGHTDIST_EARLY_RANKS"  # "0": off
CANCEL = "cancel"

_children: dict[int, subprocess.Popen] = {}  # local rank -> a waiting child not yet handed a job
_folder: Path | None = None


# -- rank 0 ------------------------------------------------------------------------------------------


def wanted(cfg: Any, flags: Sequence[str]) -> int:
    """How many processes this node's run will have, when rank 0 should start the others early; else 0."""
    from lightdist.distributed.ranks import is_rank_zero, launched_externally, processes_per_node

    if os.environ.get(SWITCH_ENV, "1") == "0" or cfg is None or "-m" in flags or "--multirun" in flags:
        return 0
    # Only where Lightning's own launcher will start the ranks: not under srun/torchrun/mpirun/LSF or
    # in a SLURM allocation (Lightning's SLURM environment starts no processes), not in a child.
    if (not is_rank_zero() or "LOCAL_RANK" in os.environ or "NODE_RANK" in os.environ or launched_externally()
            or "SLURM_NTASKS" in os.environ):
        return 0
    try:
        trainer = cfg.trainer
        strategy = cfg.get("strategy") or {}
        spawns = (strategy.get("start_method") or "popen") != "popen" or any(
            word in str(strategy.get("name", "")) for word in ("spawn", "fork"))
        if int(trainer.get("num_nodes", 1) or 1) != 1 or spawns:
            return 0
        n = processes_per_node(trainer)
    except Exception:  # an unusual config: Lightning starts the ranks, as without this module
        return 0
    # More ranks than this process has cores is refused by the checks (on CPU) or starves the imports
    # (a GPU machine has a core per GPU): not started before the checks ran.
    return n if 1 < n <= _cores() else 0


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def start(cfg: Any, flags: Sequence[str]) -> None:
    """Called by rank 0 once its config is composed (not yet checked): start local ranks 1..N-1 now."""
    global _folder
    n = wanted(cfg, flags)
    if n == 0 or _children:
        return
    _folder = Path(tempfile.mkdtemp(prefix="lightdist-ranks-"))
    atexit.register(cancel)  # whatever ends rank 0 before its launcher took the children
    # lightdist's own entry point whatever started this process (the arguments only show in `ps`: a
    # child waits for its job first, then runs it from the job config rank 0 hands it).
    command = [sys.executable, "-m", "lightdist", *sys.argv[1:]]
    for rank in range(1, n):
        # LOCAL_RANK already: Lightning reads a process's rank when it is imported (rank_zero_only), and
        # tools that look for a rank by its environment find it.
        env = dict(os.environ, **{HANDOFF_ENV: str(_folder), RANK_ENV: str(rank), "LOCAL_RANK": str(rank)})
        _children[rank] = subprocess.Popen(command, env=env)


def hand_off_to(launcher: Any) -> None:
    """Before fit: have Lightning's launcher hand the waiting children their environment instead of
    starting new processes; a launcher that starts no scripts (spawn, srun...) gets none of them."""
    from lightdist.compat import is_script_launcher, start_children_with

    if not _children:
        return
    if not is_script_launcher(launcher) or launcher.cluster_environment.creates_processes_externally:
        cancel()
        return
    start_children_with(launcher, _popen)


def _popen(command: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None,
           **kwargs: Any) -> subprocess.Popen:
    """subprocess.Popen for Lightning's launcher: the waiting child of that local rank, handed `env`."""
    rank = int((env or {}).get("LOCAL_RANK", -1))
    child = _children.pop(rank, None)
    if child is None or child.poll() is not None or kwargs or _folder is None:  # gone: start one as Lightning does
        return subprocess.Popen(command, env=env, cwd=cwd, **kwargs)
    part = _folder / f"rank{rank}.json.part"
    part.write_text(json.dumps({"env": dict(env or os.environ), "cwd": cwd}))
    part.rename(_folder / f"rank{rank}.json")  # atomic: the child never reads half a file
    return child


def cancel() -> None:
    """End the children not handed a job (they exit 0, quietly) and remove the hand-off folder."""
    global _folder
    if _folder is not None and _folder.exists():
        (_folder / CANCEL).touch()
    waiting = list(_children.values())
    _children.clear()
    for child in waiting:  # mid-import they would only see the cancel file seconds later
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in waiting:
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    if _folder is not None:
        shutil.rmtree(_folder, ignore_errors=True)
        _folder = None


# -- a child ---------------------------------------------------------------------------------------------


def waiting() -> bool:
    """Whether this process is a rank started early, still to be handed its job."""
    return HANDOFF_ENV in os.environ


def wait_for_handoff(prepare: Callable[[], None], period_s: float = 0.02) -> None:
    """In a child: import (`prepare`) while rank 0 works, then wait for the environment of the job.
    Returns with os.environ replaced by it; exits 0 quietly when cancelled or when rank 0 is gone."""
    folder, rank, parent = Path(os.environ[HANDOFF_ENV]), int(os.environ[RANK_ENV]), os.getppid()
    quiet = {s: signal.signal(s, lambda *_: os._exit(0)) for s in (signal.SIGTERM, signal.SIGINT)}
    prepare()
    handed = folder / f"rank{rank}.json"
    while not handed.exists():
        if (folder / CANCEL).exists() or not folder.exists() or os.getppid() != parent:
            os._exit(0)
        time.sleep(period_s)
    try:
        job = json.loads(handed.read_text())
        handed.unlink()  # the environment it holds stays nowhere, even if rank 0 is killed
    except OSError:  # rank 0 ended and removed the folder meanwhile
        os._exit(0)
    os.environ.clear()
    os.environ.update(job["env"])
    if job.get("cwd"):
        os.chdir(job["cwd"])
    for sig, handler in quiet.items():  # from here on, a rank like any other
        signal.signal(sig, handler)
