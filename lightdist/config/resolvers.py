"""OmegaConf resolvers used by conf/: where a run's directory is and what it is called."""

import os
import secrets
import time

from omegaconf import OmegaConf

_local_run_id: str | None = None


def run_id() -> str:
    """A name for this run that every rank of the job computes identically.

    Under SLURM it is the job id (array job and task for arrays), so that a requeued job
    lands in the same directory and resumes there. In a Kubernetes PyTorchJob it is the job's
    name (LIGHTDIST_JOB_NAME, else the master's address and port). Under torchrun it is the rendezvous
    id (`--rdzv-id`), or, under static rendezvous (no id), the start time of the first rank,
    shared through torchrun's rendezvous store, whatever node a rank is on. A local run is
    named by its start time, computed once per process (ranks > 0 of a local run never
    compute it: they read rank 0's resolved config).
    """
    global _local_run_id
    if "SLURM_ARRAY_JOB_ID" in os.environ and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"slurm-{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if "SLURM_JOB_ID" in os.environ:
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    from lightdist.distributed import torchrun
    from lightdist.distributed.cluster import job_id

    kubeflow = job_id()  # a PyTorchJob's pods: the job's name (or its master's address and port)
    if kubeflow:
        return f"k8s-{kubeflow}"
    if torchrun.rendezvous_id():
        return f"torchrun-{torchrun.rendezvous_id()}"
    if _local_run_id is None:
        # The suffix keeps two runs started in the same second apart.
        _local_run_id = time.strftime("%Y-%m-%d_%H-%M-%S") + "_" + secrets.token_hex(2)
        if torchrun.launched_by_torchrun():
            _local_run_id = "torchrun-" + torchrun.agreed_value(torchrun.RUN_ID_KEY, _local_run_id)
    return _local_run_id


def run_dir(explicit: str | None, base: str) -> str:
    """`run_dir=...` on the command line wins (resume into an existing run); else base/run_id."""
    return os.path.abspath(explicit) if explicit else os.path.join(base, run_id())


def required(what: str = "a value") -> str:
    """`key: ${lightdist.required:'what it is'}`: a value the user must override. Hydra's `???` cannot say
    this in an experiment, because merging `???` over a group's default keeps the default."""
    from lightdist.errors import ConfigError

    raise ConfigError(f"missing required value: {what}")


def register() -> None:
    for name, fn in {
        "lightdist.run_id": run_id,
        "lightdist.run_dir": run_dir,
        "lightdist.cwd": os.getcwd,
        "lightdist.required": required,
        "lightdist.data_root": lambda: os.environ.get("LIGHTDIST_DATA") or os.path.join(os.getcwd(), "data"),
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
