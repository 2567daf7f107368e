"""Make Hydra and Lightning's DDP launcher agree.

Lightning's `ddp` launcher starts ranks > 0 by re-executing the command line. Under
Hydra that replays composition in every child: each child may compute its own
`${now:}` run directory, write its own config and logs, and under `-m` replay the
whole sweep. lightdist instead has rank 0 write the fully resolved config of the job
into the run directory and point its children at it through an environment variable;
a child that finds the variable skips Hydra and runs that one job from that file.
The command line the children receive is then irrelevant, whatever Lightning puts in it.
"""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

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


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
