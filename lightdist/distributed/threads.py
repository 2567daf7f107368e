"""CPU threads per rank, so that N ranks on one machine share its cores instead of fighting.

Each PyTorch process starts one intra-op thread per core it can see; N ranks on C cores
would then run N*C threads and slow each other down. Lightning only divides threads
when OMP_NUM_THREADS is unset and only for its own launcher; this covers srun and
torchrun as well and honours SLURM's --cpus-per-task.
"""

import os

import torch


def available_cores() -> int:
    if "SLURM_CPUS_PER_TASK" in os.environ:
        # srun pins each task to its own cores: they are this rank's alone.
        return max(1, int(os.environ["SLURM_CPUS_PER_TASK"]))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_rank(setting: int | str, ranks_on_this_machine: int) -> int:
    """`setting` is an int, or "auto": the cores this process may use divided among the local ranks."""
    if setting != "auto":
        return int(setting)
    cores = available_cores()
    if "SLURM_CPUS_PER_TASK" in os.environ:
        return cores
    return max(1, cores // max(1, ranks_on_this_machine))


def configure_threads(setting: int | str, ranks_on_this_machine: int) -> int:
    n = threads_per_rank(setting, ranks_on_this_machine)
    torch.set_num_threads(n)
    # Lightning's launcher checks this before dividing threads itself; we already did.
    os.environ["OMP_NUM_THREADS"] = str(n)
    return n
