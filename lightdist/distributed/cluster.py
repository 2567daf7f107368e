"""Cluster environments handed to the Trainer, and the network interface its process group uses.

Lightning detects torchrun, SLURM, LSF and MPI by itself; lightdist passes SLURM's environment
with its own requeue handling off, and Kubeflow's, which Lightning never detects. Importing this
module imports no Lightning (the run id needs `job_id` before Lightning is loaded).
"""

import os

from lightdist.errors import ConfigError

# What the Kubeflow training operator sets in every pod of a PyTorchJob (one process per pod).
KUBEFLOW_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")


def _torchelastic() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def _slurm() -> bool:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    # Only under SLURM: detect() also warns wherever srun is installed but not used.
    return "SLURM_NTASKS" in os.environ and SLURMEnvironment.detect()


def kubeflow_detected() -> bool:
    """A pod of a PyTorchJob: the operator's variables, and no launcher inside the pod (torchrun in
    the pod, for several processes per pod, is torchrun's environment; Lightning's own children
    have LOCAL_RANK)."""
    return (all(name in os.environ for name in KUBEFLOW_VARIABLES) and "LOCAL_RANK" not in os.environ
            and not _torchelastic() and "SLURM_PROCID" not in os.environ)


def cluster_environment():
    """The ClusterEnvironment lightdist hands the Trainer, or None to let Lightning detect one.

    torchrun first, as Lightning orders it (it may run inside a SLURM allocation). Under srun:
    SLURMEnvironment with its requeue handling off, since lightdist.distributed.preemption saves
    and requeues at a step all ranks agree on, on SIGUSR1 and on SIGTERM. In a PyTorchJob pod:
    KubeflowEnvironment (ranks and the master from the operator's variables).
    """
    from lightning.fabric.plugins.environments import KubeflowEnvironment, SLURMEnvironment

    if _torchelastic():
        return None
    if _slurm():
        return SLURMEnvironment(auto_requeue=False)
    if kubeflow_detected():
        return KubeflowEnvironment()
    return None


def cluster_plugins(cfg=None) -> list:
    """The Trainer's plugins for this environment. With the job's config (`trainer.num_nodes`,
    `distributed.socket_ifname`), also the network interface of a multi-node process group
    (lightdist.distributed.network), chosen here because it must be set before the group starts."""
    from lightdist.distributed.network import pin_socket_interface
    from lightdist.distributed.torchrun import isolate_restarted_group

    isolate_restarted_group()  # a torchrun restart: the process group must not meet the dead attempt's keys
    environment = cluster_environment()
    if cfg is not None:
        trainer = cfg.get("trainer") or {}
        if kubeflow_detected() and environment is not None:
            _check_pod_layout(trainer)
        configured = (cfg.get("distributed") or {}).get("socket_ifname")
        main_address = environment.main_address if environment else os.environ.get("MASTER_ADDR", "127.0.0.1")
        pin_socket_interface(main_address, int(trainer.get("num_nodes", 1) or 1), configured)
    return [environment] if environment else []


def _check_pod_layout(trainer) -> None:
    """A PyTorchJob runs one process per pod (Kubeflow's local rank is always 0): a layout that does
    not match would train each pod on its own, or wait for ranks that never come."""
    pods, num_nodes, devices = int(os.environ["WORLD_SIZE"]), trainer.get("num_nodes", 1), trainer.get("devices", 1)
    if num_nodes != pods or str(devices) not in ("1", "auto"):
        raise ConfigError(f"the PyTorchJob runs {pods} pod(s) of one process each, but trainer.num_nodes={num_nodes} "
                          f"trainer.devices={devices}",
                          hint=f"set trainer.num_nodes={pods} trainer.devices=1 (the master and worker replicas), or "
                               "run torchrun in each pod for several processes per pod")


def job_id() -> str | None:
    """A name of this job that every rank of a PyTorchJob computes identically, or None elsewhere.

    The job's name when the pod carries it (LIGHTDIST_JOB_NAME, set in k8s/pytorchjob.yaml from
    the operator's job-name label), else the master's address and port the operator set (its
    service, named after the job: `<job>-master-0`).
    """
    if not kubeflow_detected():
        return None
    name = os.environ.get("LIGHTDIST_JOB_NAME")
    if name:
        return name
    return f"{os.environ['MASTER_ADDR']}-{os.environ['MASTER_PORT']}".replace("/", "-").replace(":", "-")
