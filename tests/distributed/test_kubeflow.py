"""Kubernetes: a PyTorchJob's environment (Kubeflow training operator) and the manifest template.

No cluster is needed: the operator's only contract with the pods is its environment
(MASTER_ADDR/MASTER_PORT of the master's service, WORLD_SIZE = all replicas, RANK = 0 for the
master, i + 1 for worker i, one process per pod), so two processes started with it on this
machine are a PyTorchJob of two pods, minus the network between them.
"""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.fabric.plugins.environments import KubeflowEnvironment, SLURMEnvironment
from omegaconf import OmegaConf

from lightdist.distributed import cluster
from lightdist.errors import ConfigError
from tests.helpers.cli import QUIET, REPO, cli_env, read_summary, run_dirs

MANIFEST = REPO / "k8s" / "pytorchjob.yaml"
POD = {"MASTER_ADDR": "train-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "2", "RANK": "1"}
OTHER_LAUNCHERS = ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID",
                   "SLURM_NTASKS_PER_NODE",
                   "LIGHTDIST_JOB_NAME", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


@pytest.fixture
def pod(monkeypatch) -> dict:
    for name in OTHER_LAUNCHERS:  # set first, so that what the code under test sets is undone afterwards
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    for name, value in POD.items():
        monkeypatch.setenv(name, value)
    return POD


def test_a_pod_is_detected_and_gets_kubeflow_environment(pod):
    assert cluster.kubeflow_detected()
    environment = cluster.cluster_environment()
    assert isinstance(environment, KubeflowEnvironment)
    assert (environment.global_rank(), environment.world_size(), environment.main_address) == (1, 2, "train-master-0")
    from lightdist.distributed.ranks import is_rank_zero, launched_externally

    assert launched_externally() and not is_rank_zero()


@pytest.mark.parametrize("other", ["LOCAL_RANK", "TORCHELASTIC_RUN_ID", "missing RANK"])
def test_other_launchers_are_not_a_pod(pod, monkeypatch, other):
    if other == "missing RANK":
        monkeypatch.delenv("RANK")
    else:  # Lightning's own children, torchrun inside the pod
        monkeypatch.setenv(other, "0")
    assert not cluster.kubeflow_detected()
    assert not isinstance(cluster.cluster_environment(), KubeflowEnvironment)


def test_srun_keeps_slurm_environment(pod, monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "1")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    environment = cluster.cluster_environment()
    assert isinstance(environment, SLURMEnvironment) and not environment.auto_requeue


def test_the_pod_layout_must_match_the_trainer(pod):
    cfg = OmegaConf.create({"trainer": {"num_nodes": 2, "devices": 1}, "distributed": {"socket_ifname": None}})
    assert isinstance(cluster.cluster_plugins(cfg)[0], KubeflowEnvironment)
    cfg.trainer.num_nodes = 1
    with pytest.raises(ConfigError, match="trainer.num_nodes=2 trainer.devices=1"):
        cluster.cluster_plugins(cfg)


def test_job_id_is_the_same_in_every_pod(pod, monkeypatch):
    ids = set()
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        ids.add(cluster.job_id())
    assert ids == {"train-master-0-23456"}
    monkeypatch.setenv("LIGHTDIST_JOB_NAME", "train")  # the manifest passes the job's name
    assert cluster.job_id() == "train"
    monkeypatch.delenv("MASTER_ADDR")
    assert cluster.job_id() is None


def test_the_manifest_runs_lightdist_with_one_process_per_pod():
    yaml = pytest.importorskip("yaml")
    from lightdist.config import resolvers
    from lightdist.config.checks import preflight

    resolvers.register()
    job = yaml.safe_load(MANIFEST.read_text())
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    pods = sum(spec["replicas"] for spec in replicas.values())
    containers = [spec["template"]["spec"]["containers"][0] for spec in replicas.values()]
    assert all(c["name"] == "pytorch" for c in containers)  # the container the operator configures
    assert containers[0]["command"] == containers[1]["command"]
    command = containers[0]["command"]
    assert command[:3] == ["python", "-m", "lightdist"]
    overrides = command[3:]
    assert f"trainer.num_nodes={pods}" in overrides and "trainer.devices=1" in overrides
    # The outputs and the data are on the volume every pod mounts.
    mounts = {m["name"]: m["mountPath"] for m in containers[0]["volumeMounts"]}
    shared = next(v["name"] for v in replicas["Master"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v)
    log_dir = next(o.split("=", 1)[1] for o in overrides if o.startswith("paths.log_dir="))
    env = {e["name"]: e.get("value") for e in containers[0]["env"]}
    assert log_dir.startswith(mounts[shared] + "/") and env["LIGHTDIST_DATA"].startswith(mounts[shared] + "/")
    # A valid job for that layout: one GPU per pod, `pods` nodes (no data or GPU needed here).
    cfg = preflight(overrides, with_data=False, allocation={"gpus": 1, "tasks_per_node": 1, "nodes": pods})
    assert cfg.trainer.num_nodes == pods


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


SMALL = ["trainer=cpu_ddp", "trainer.devices=1", "trainer.num_nodes=2", "model.channels=[8,16]", "model.hidden=64",
         "data.augment=null", "data.train_subset=256", "data.val_subset=64", "data.test_subset=64",
         "data.batch_size=32", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
         "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0", "scheduler=none", "logger=csv", *QUIET]


def test_a_two_pod_job_trains_into_one_run_directory(tmp_path: Path):
    port = str(_free_port())
    procs = []
    for rank in ("0", "1"):  # the master pod and worker 0, as the operator starts them
        env = cli_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", RANK=rank,
                      LIGHTDIST_JOB_NAME="mnist-test")
        for name in ("SLURM_NTASKS", "SLURM_JOB_NAME", "SLURM_PROCID"):
            env.pop(name, None)
        procs.append(subprocess.Popen([sys.executable, "-m", "lightdist", *SMALL], cwd=tmp_path, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    out = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n---\n".join(text[-4000:] for text in out)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out[1]  # rank 1 joined rank 0's group, not a group of its own
    (run_dir,) = run_dirs(tmp_path)  # rank 0's, with the config, the summary and the checkpoints
    summary = read_summary(run_dir)
    assert summary["world_size"] == 2 and summary["global_step"] == 3
    folders = list((tmp_path / "outputs" / "default").iterdir())
    assert folders == [run_dir] and "mnist-test" in run_dir.name
