"""Cluster environments handed to the Trainer."""

from lightning.fabric.plugins.environments import SLURMEnvironment


def cluster_plugins() -> list:
    """Under srun: Lightning's SLURMEnvironment (ranks, addresses), with its own requeue handling
    off: lightdist.distributed.preemption saves and requeues at a step all ranks agree on, on
    SIGUSR1 and on SIGTERM (SLURM's preemption and requeue signal)."""
    if not SLURMEnvironment.detect():
        return []
    return [SLURMEnvironment(auto_requeue=False)]
