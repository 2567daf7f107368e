"""Make Hydra and Lightning's DDP launcher agree.

Lightning's `ddp` launcher starts ranks > 0 by re-executing the command line. Under
Hydra that replays composition in every child: each child may compute its own
`${now:}` run directory, write its own config and logs, and under `-m` replay the
whole sweep. lightdist instead has rank 0 write the fully resolved config of the job
into the run directory and point its children at it through an environment variable;
a child that finds the variable skips Hydra and runs that one job from that file.
The command line the children receive is then irrelevant, whatever Lightning puts in it.
"""

import atexit
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lightdist.compat import before_rank_observer_kills, is_script_launcher
from lightdist.distributed import early_ranks
from lightdist.errors import RankFailed, error_line, one_line

JOB_CONFIG_ENV = "LIGHTDIST_JOB_CONFIG"


def child_job_config() -> Path | None:
    """The resolved job config, when this process is a rank > 0 started by Lightning's launcher."""
    path = os.environ.get(JOB_CONFIG_ENV)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if path and local_rank > 0:
        return Path(path)
    return None


def announce_job_config(path: Path) -> None:
    """Called by rank 0 before Lightning starts its children, which inherit the environment."""
    os.environ[JOB_CONFIG_ENV] = str(path)


@contextlib.contextmanager
def isolated_job() -> Iterator[None]:
    """Run one Hydra job so that the next job in the same process starts clean.

    Lightning's launcher leaves LOCAL_RANK, MASTER_PORT, WORLD_SIZE... in os.environ and
    the default process group alive. A second multirun job would then believe its
    processes were launched externally and wait forever for children it never started.
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        _destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)


# Whether this process has run a process group: its C++ threads may outlive the group's destruction.
ran_process_group = False


def _destroy_process_group() -> None:
    global ran_process_group
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        ran_process_group = True
        dist.destroy_process_group()


# -- a rank that dies ------------------------------------------------------------------------------
# Rank 0 names a rank > 0 that died: a watch thread as soon as the rank is gone (Lightning's own
# observer kills rank 0 with SIGKILL within 5 s of a child's death, before any message could be
# printed), and the job when the death surfaces as the backend's error in a collective.
_launcher: Any = None  # Lightning's launcher of this job's ranks > 0 (on rank 0)
_reported: str | None = None  # the death already reported (by the watch or by the job): once only
_reporting = threading.Lock()


def rank_log(run_dir: str | Path, rank: int) -> Path:
    """Where rank > 0 of a job started by Lightning's launcher logs (rank 0 logs to Hydra's train.log)."""
    return Path(run_dir) / f"rank{rank}.log"


def watch_ranks(trainer: Any, run_dir: str | Path) -> None:
    """Name a rank started by this process that gets killed, the moment it is gone."""
    global _launcher, _reported
    launcher = _launcher = getattr(trainer.strategy, "launcher", None)
    _reported = None
    early_ranks.hand_off_to(launcher)  # ranks rank 0 started early take the places of those it would start
    # Only ranks this process starts as scripts itself (not srun's or torchrun's, which start every
    # rank; spawn/fork children report their own errors through Lightning's multiprocessing queue).
    if is_script_launcher(launcher) and not launcher.cluster_environment.creates_processes_externally:
        # Lightning's own observer kills this process when it sees a dead rank: it reports first
        before_rank_observer_kills(lambda: _report_killed(launcher, Path(run_dir)))
        threading.Thread(target=_watch, args=(launcher, Path(run_dir)), name="lightdist-rank-watch",
                         daemon=True).start()


def _watch(launcher: Any, run_dir: Path, period_s: float = 0.1) -> None:
    while True:
        time.sleep(period_s)
        procs = list(launcher.procs)  # empty until fit() starts the ranks
        if procs and all(p.poll() == 0 for p in procs):
            return
        if _report_killed(launcher, run_dir):
            return


def _report_killed(launcher: Any, run_dir: Path) -> bool:
    """Print the first rank killed from outside (SIGKILL, the OOM killer, a segfault), once; ranks that
    exit with an error or on SIGINT/SIGTERM may just be following rank 0, which reports its own error.
    True when there is nothing more to watch."""
    # Ctrl-C: Lightning ignores further SIGINTs and kills the ranks itself; not a death to report.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return True
    death = _death(launcher, run_dir, lambda code: code < 0 and -code not in (signal.SIGINT, signal.SIGTERM))
    if death and _claim(death):
        print(error_line(death), file=sys.stderr, flush=True)
    return death is not None


def _claim(death: str) -> bool:
    """True for the first of the watch and the job to report a death."""
    global _reported
    with _reporting:
        first = _reported is None
        _reported = _reported or death
    return first


def _death(launcher: Any, run_dir: Path, counts: Callable[[int], bool]) -> str | None:
    for local_rank, proc in enumerate(list(getattr(launcher, "procs", None) or []), start=1):
        code = proc.poll()
        if code and counts(code):
            rank = launcher.cluster_environment.node_rank() * launcher.num_processes + local_rank
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            return f"rank {rank} (pid {proc.pid}) died ({how}); its log: {rank_log(run_dir, rank)}"
    return None


def _lost_peer(exc: BaseException) -> bool:
    """An error of the collective backend: what a peer that went away looks like from here."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, getattr(dist, "DistError", ())) or any(
        word in text for word in ("gloo", "NCCL", "closed by peer", "Connection reset", "Broken pipe"))


def rank_failure(exc: BaseException, run_dir: str | Path, wait_s: float = 1.0) -> BaseException | None:
    """What rank 0 raises instead of `exc` when `exc` is a rank > 0 that died; None otherwise.

    A peer killed mid-collective surfaces on rank 0 as gloo's "Connection closed by peer",
    whose real cause is the death. Only such lost-peer errors are explained so: other errors
    likely hit every rank alike, and rank 0 reports its own. The wait covers a peer whose
    socket closed a moment before its exit status is readable.
    """
    if _reported is None and not _lost_peer(exc):
        return None
    deadline = time.monotonic() + wait_s
    while True:
        if _reported is not None:  # the watch printed it: leave quietly
            return SystemExit(RankFailed.exit_code)
        death = _death(_launcher, Path(run_dir), lambda code: True)
        if death:
            return RankFailed(death) if _claim(death) else SystemExit(RankFailed.exit_code)
        if time.monotonic() >= deadline:
            _end_started_ranks_at_exit()
            return _timeout_failure(exc)
        time.sleep(0.05)


def _end_started_ranks_at_exit() -> None:
    """No rank died, so one is alive but stuck outside a collective (whatever the error's words: a
    timeout, or a pair the timeout closed). Ranks this process started would outlive it (rank 0 raising
    does not end them) and keep the job's terminal and resources: they are ended at exit, once its
    error is out. The watch is told first that this is no death to report."""
    _claim("stuck")
    if is_script_launcher(_launcher) and _launcher.procs:  # procs: the ranks this process started
        atexit.register(_launcher.kill, signal.SIGKILL)


def _timeout_failure(exc: BaseException) -> RankFailed | None:
    """A collective that gave up waiting (distributed.timeout_s): a peer alive but stuck, named as such."""
    from lightdist.distributed.ranks import rank_from_env

    text = one_line(exc)
    if "timed out" not in text.lower() and "timeout" not in text.lower():
        return None
    detail = text.split("] ", 1)[-1]  # gloo prefixes its source file and line
    return RankFailed(f"rank {rank_from_env()}: a collective waited longer than distributed.timeout_s for another "
                      f"rank, which stopped responding ({detail})",
                      hint="find what that rank was doing; raise distributed.timeout_s if it is only slow")
