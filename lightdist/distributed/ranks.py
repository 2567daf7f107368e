"""Which process am I, read from the environment before any process group exists.

Launchers tell a process its rank through environment variables: Lightning's own DDP
launcher sets LOCAL_RANK/NODE_RANK for the children it starts, torchrun sets RANK, and
srun sets SLURM_PROCID. The CLI needs the answer before Lightning is even imported (to
decide whether this process may write the run directory), so it reads them directly.
"""

import os
from typing import Any

_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def rank_from_env() -> int:
    """The rank this process was given by its launcher (0 when it was given none).

    Same precedence as Lightning's `rank_zero_only`, so both agree on who is rank 0.
    """
    for name in _RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None:
            return int(value)
    return 0


def launched_externally() -> bool:
    """True when every rank was started by an outside launcher (srun, torchrun, mpirun, a PyTorchJob)."""
    from lightdist.distributed.cluster import kubeflow_detected

    if "TORCHELASTIC_RUN_ID" in os.environ or "JSM_NAMESPACE_RANK" in os.environ or kubeflow_detected():
        return True
    # srun sets SLURM_STEP_ID for the tasks it starts; a plain sbatch batch shell does not.
    return "SLURM_STEP_ID" in os.environ and "SLURM_NTASKS" in os.environ


def is_rank_zero() -> bool:
    # NODE_RANK > 0: the main process of another node, which has no LOCAL_RANK yet.
    return rank_from_env() == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def processes_per_node(trainer_cfg: Any) -> int:
    """How many ranks this node will run (what CPU threads are divided among), from the trainer
    config: a device count, or a list of devices; anything else ("auto", -1) counts as one. Kept here,
    with nothing imported, for the early start of ranks (early_ranks), which must not wait for Lightning."""
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.isdigit():
        return int(devices)
    if hasattr(devices, "__len__") and not isinstance(devices, str):
        return len(devices)
    return 1
