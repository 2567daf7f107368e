"""Against a real two-node SLURM cluster (.ci/run starts one: two slurmd, each in its own network
and hostname namespace, so the nodes are two hosts with their own addresses).

Real jobs of 2 nodes x 1 task over gloo, not dry runs: the CPU template with -N2, the multi-node
template on CPU nodes, and a preemption with requeue that resumes in the same run directory.
"""

import pytest

from tests.helpers.cli import REPO, read_summary, run_dirs
from tests.helpers.slurm import (
    PREEMPT,
    TINY,
    log_of,
    preempt_after_a_checkpoint,
    require_slurm,
    segments_of,
    submit,
    train_loss_steps,
    usable_nodes,
    wait_for,
)

TWO_NODES = ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1"]


@pytest.fixture(scope="module")
def two_nodes():
    require_slurm()
    nodes = usable_nodes()
    if len(nodes) < 2:
        pytest.skip(f"the SLURM cluster has {len(nodes)} usable node(s) ({', '.join(nodes) or 'none'}); these "
                    "tests need 2: ../shared/tools/local-slurm/start-slurm-2node.sh starts such a cluster")


def assert_one_run_on_two_hosts(workdir, job: str) -> dict:
    """One run directory for the job, world size 2, and its ranks on two different hosts."""
    run_dir = workdir / "outputs" / "default" / f"slurm-{job}"
    assert run_dirs(workdir) == [run_dir], log_of(workdir)[-3000:]
    summary = read_summary(run_dir)
    assert summary["world_size"] == 2
    for segment in segments_of(run_dir):
        assert len(segment["hosts"]) == 2 and len(set(segment["hosts"])) == 2, segment  # rank 0, rank 1
    return summary


@pytest.mark.parametrize("template, env", [
    ("train_cpu.sbatch", {}),
    # the GPU template on CPU nodes: the trainer from LIGHTDIST_TRAINER, no GPUs asked for
    ("multinode.sbatch", {"LIGHTDIST_TRAINER": "trainer=cpu_ddp"}),
])
def test_two_nodes_one_task_each_train_over_gloo(template, env, two_nodes, workdir):
    extra = ["--gpus-per-node=0"] if template == "multinode.sbatch" else []
    job = submit([*TWO_NODES, *extra, str(REPO / "slurm" / template), *TINY, "data.train_subset=512",
                  "trainer.max_epochs=1"], workdir, **env)
    state = wait_for(job, timeout=240)
    assert state["JobState"] == "COMPLETED", log_of(workdir)[-3000:]
    summary = assert_one_run_on_two_hosts(workdir, job)
    assert "test/acc" in summary["test"] and summary["global_step"] == 4  # 512 samples / 2 ranks / 64
    if template == "multinode.sbatch":
        assert "master " in log_of(workdir)


def test_preemption_on_two_nodes_requeues_and_resumes(two_nodes, workdir):
    """Preempted mid-epoch: both nodes' ranks save preempted.ckpt at one step, the job is requeued
    and resumes from that step in the same run directory, every step logged once."""
    job = submit([*TWO_NODES, str(REPO / "slurm" / "train_cpu.sbatch"), *TINY, "data.train_subset=2560",
                  "trainer.limit_train_batches=20", "trainer.max_epochs=3", "trainer.log_every_n_steps=1",
                  "callbacks.model_checkpoint=null", "test_after_fit=false"], workdir)
    run_dir = workdir / "outputs" / "default" / f"slurm-{job}"
    preempt_after_a_checkpoint(job, run_dir, 0, PREEMPT["usr1-full"], workdir)
    state = wait_for(job, timeout=240)
    log = log_of(workdir)
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", log[-3000:]
    assert_one_run_on_two_hosts(workdir, job)
    before, after = segments_of(run_dir)
    assert [before["status"], after["status"]] == ["requeued", "completed"], log[-3000:]
    assert after["resumed_from"].endswith("checkpoints/preempted.ckpt")
    assert after["start_step"] == before["global_step"] > before["start_step"]
    assert "preemption (SIGUSR1): saved" in log
    summary = read_summary(run_dir)
    assert summary["global_step"] == 60
    assert sorted(train_loss_steps(run_dir)) == list(range(60)), "every step logged exactly once"
