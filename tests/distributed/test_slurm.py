"""Against a real SLURM scheduler (.ci/run installs and starts it: two nodes; these jobs use one).

The CPU template with 2 tasks over gloo, preemption with requeue and resume (SIGUSR1 and
SIGTERM, sent to the steps, to the batch shell, or by SLURM itself), a job array of sweep
points, and launch.sh's dry runs and preflight refusals.
"""

import csv
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.cli import REPO, cli_env, read_summary, run_dirs
from tests.helpers.slurm import (
    PREEMPT,
    TINY,
    job_state,
    log_of,
    preempt_after_a_checkpoint,
    require_slurm,
    segments_of,
    slurm_env,
    submit,
    train_loss_steps,
    wait_for,
)

LAUNCH = str(REPO / "launch.sh")


@pytest.fixture(scope="module")
def slurm():
    require_slurm()


def test_cpu_template_two_tasks_over_gloo(slurm, workdir):
    job = submit([str(REPO / "slurm" / "train_cpu.sbatch"), *TINY, "trainer.max_epochs=2"], workdir)
    state = wait_for(job)
    assert state["JobState"] == "COMPLETED", log_of(workdir)[-3000:]
    assert run_dirs(workdir) == [workdir / "outputs" / "default" / f"slurm-{job}"]
    run_dir = run_dirs(workdir)[0]
    summary = read_summary(run_dir)
    assert summary["world_size"] == 2 and "test/acc" in summary["test"]
    assert summary["threads_per_rank"] == 1  # --cpus-per-task=1 per rank
    with open(run_dir / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f) if r.get("val/acc")] == ["0", "1"]


@pytest.mark.parametrize("first, second", [("usr1-full", "term-full"), ("usr1-batch-only", "scontrol-requeue")])
def test_preemption_requeues_and_resumes_where_it_stopped(first, second, slurm, workdir):
    """Two preemptions of one job, each signalled mid-epoch: every rank saves preempted.ckpt at
    the same step, the job is requeued, resumes from that step in the same directory, completes."""
    job = submit([str(REPO / "slurm" / "train_cpu.sbatch"), *TINY, "data.train_subset=2560",
                  "trainer.limit_train_batches=20", "trainer.max_epochs=4", "trainer.log_every_n_steps=1",
                  "callbacks.model_checkpoint=null", "test_after_fit=false"], workdir)
    run_dir = workdir / "outputs" / "default" / f"slurm-{job}"
    preempt_after_a_checkpoint(job, run_dir, 0, PREEMPT[first], workdir)
    preempt_after_a_checkpoint(job, run_dir, 1, PREEMPT[second], workdir)
    state = wait_for(job, timeout=240)
    log = log_of(workdir)
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "2", log[-3000:]
    assert run_dirs(workdir) == [run_dir]  # the requeued job came back to the same directory
    segments = segments_of(run_dir)
    assert [s["slurm_restart_count"] for s in segments] == [0, 1, 2]
    assert [s["status"] for s in segments] == ["requeued", "requeued", "completed"], log[-3000:]
    for before, after in zip(segments, segments[1:]):
        assert after["resumed_from"].endswith("checkpoints/preempted.ckpt")
        # resumed from the preempted step, not from the epoch-end checkpoint before it
        assert after["start_step"] == before["global_step"] > before["start_step"]
    assert "preemption (SIGUSR1): saved" in log and "preemption (SIGTERM): saved" in log
    assert "SIGUSR1: passed on to the step" in log  # the batch shell got it, survived and passed it on
    assert not (run_dir / "checkpoints" / "preempted.ckpt.partial").exists()
    summary = read_summary(run_dir)
    assert summary["global_step"] == 80
    steps = train_loss_steps(run_dir)
    assert sorted(steps) == list(range(summary["global_step"])), "every step logged exactly once"


def test_cancel_is_not_turned_into_a_requeue(slurm, workdir):
    """`scancel <job>` sends SIGTERM too, but a cancelled job must stay cancelled."""
    job = submit([str(REPO / "slurm" / "train_cpu.sbatch"), *TINY, "data.train_subset=2560",
                  "trainer.limit_train_batches=20", "trainer.max_epochs=4", "callbacks.model_checkpoint=null"],
                 workdir)
    run_dir = workdir / "outputs" / "default" / f"slurm-{job}"
    preempt_after_a_checkpoint(job, run_dir, 0, ["scancel"], workdir)
    deadline = time.time() + 60
    while (state := job_state(job))["JobState"] in ("RUNNING", "COMPLETING") and time.time() < deadline:
        time.sleep(0.5)
    assert state["JobState"] == "CANCELLED" and state["Restarts"] == "0", log_of(workdir)[-3000:]


def test_sigterm_outside_slurm_saves_and_stops_cleanly(workdir):
    """SIGTERM to the process that started the ranks (kill, a container stop): the ranks agree on
    it, save preempted.ckpt at one step and exit cleanly instead of dying mid-step."""
    log = workdir / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lightdist", "trainer=cpu_ddp", "trainer.devices=2", *TINY,
                                 "data.train_subset=2560", "trainer.limit_train_batches=20", "trainer.max_epochs=4",
                                 "callbacks.model_checkpoint=null", "test_after_fit=false"],
                                cwd=workdir, env=cli_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not list(workdir.glob("outputs/default/*/checkpoints/last.ckpt")):
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    run_dir = run_dirs(workdir)[0]
    segment = segments_of(run_dir)[0]
    assert segment["status"] in ("requeued", "preempted") and segment["global_step"] >= 20, text[-3000:]
    assert "preemption (SIGTERM): saved" in text
    assert (run_dir / "checkpoints" / "preempted.ckpt").is_file()
    assert not (run_dir / "checkpoints" / "preempted.ckpt.partial").exists()


def test_array_job_runs_each_sweep_point(slurm, workdir):
    out = subprocess.run([LAUNCH, "slurm", "--cpu", "--sweep", "--", *TINY, "trainer.max_steps=3",
                          "test_after_fit=false", "optimizer.lr=0.001,0.002"], cwd=workdir, env=slurm_env(),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    job = re.search(r"Submitted batch job (\d+)", out.stdout).group(1)
    deadline = time.time() + 400
    while time.time() < deadline and subprocess.run(["squeue", "-h", "-j", job], capture_output=True,
                                                    text=True).stdout.strip():
        time.sleep(1)
    dirs = run_dirs(workdir)
    assert [d.name for d in dirs] == [f"slurm-{job}_0", f"slurm-{job}_1"], log_of(workdir)[-3000:]
    import yaml

    assert [yaml.safe_load((d / "config.yaml").read_text())["optimizer"]["lr"] for d in dirs] == [0.001, 0.002]
    assert all(read_summary(d)["world_size"] == 2 for d in dirs)


def test_search_array_tasks_share_one_optuna_study(slurm, workdir):
    """Two array tasks, each a 2-rank DDP job running a trial of the same study: rank 0 asks the
    study, rank 1 follows it; the summary then covers both tasks' trials."""
    import optuna
    import yaml

    from lightdist.sweeps.study import open_storage

    job = submit(["--array=0-1", str(REPO / "slurm" / "search.sbatch"), *TINY, "hparams_search=random_lr",
                  "hydra.sweeper.n_trials=1", "trainer.max_epochs=1", "trainer.limit_train_batches=4",
                  "test_after_fit=false"], workdir)
    wait_for(job, timeout=400)
    folder = workdir / "outputs" / "default" / f"search-{job}"
    runs = sorted(p.parent for p in folder.rglob("summary.json"))
    assert [r.relative_to(folder).as_posix() for r in runs] == ["task-0/0", "task-1/0"], log_of(workdir)[-3000:]
    assert all(read_summary(r)["world_size"] == 2 for r in runs)
    study = optuna.load_study(study_name=f"default-{job}", storage=open_storage(str(folder / "optuna.journal")))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    lrs = {yaml.safe_load((r / "config.yaml").read_text())["optimizer"]["lr"] for r in runs}
    assert lrs == {t.params["optimizer.lr"] for t in study.trials}  # each task ran the trial it was given
    out = subprocess.run([sys.executable, "-m", "lightdist", "sweep", "--summarize", str(folder)], cwd=workdir,
                         env=cli_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "task-0/0" in out.stdout and "task-1/0" in out.stdout
    assert (folder / "sweep_summary.csv").is_file()


def launch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LAUNCH, *args], cwd=cwd, env=slurm_env(), capture_output=True, text=True, timeout=120)


def test_dry_runs(workdir):
    local = launch(["local", "--devices", "2", "--cpu", "--dry-run", "--", "+experiment=fashion_mnist_cnn"], workdir)
    assert local.returncode == 0, local.stderr
    assert local.stdout.split()[1:] == ["-m", "lightdist", "trainer=cpu_ddp", "trainer.devices=2",
                                        "+experiment=fashion_mnist_cnn"]
    sub = launch(["slurm", "--cpu", "--tasks-per-node", "2", "--time", "00:30:00", "--dry-run", "--",
                  "+experiment=fashion_mnist_cnn"], workdir)
    assert sub.returncode == 0, sub.stderr
    assert sub.stdout.split() == ["sbatch", "--nodes=1", "--ntasks-per-node=2", "--time=00:30:00",
                                  str(REPO / "slurm" / "train_cpu.sbatch"), "+experiment=fashion_mnist_cnn"]
    gpu = launch(["slurm", "--nodes", "2", "--gpus", "4", "--partition", "gpu", "--dry-run", "--",
                  "+experiment=fashion_mnist_cnn", "trainer.max_epochs=1"], workdir)
    if shutil.which("sinfo") is None:  # with SLURM present the CPU-only partition refuses (test below)
        assert gpu.returncode == 0, gpu.stderr
        assert "multinode.sbatch" in gpu.stdout and "--gpus-per-node=4" in gpu.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["slurm", "--cpu", "--dry-run", "--", "+experiment=no_such_recipe"], "unknown experiment 'no_such_recipe'"),
    (["slurm", "--cpu", "--tasks-per-node", "2", "--dry-run", "--", "trainer.devices=3"],
     "trainer.devices=3 but the job runs 2 task(s) per node"),
    (["slurm", "--cpu", "--dry-run", "--", "trainer=gpu"], "needs CUDA GPUs but each node of the requested"),
    (["slurm", "--cpu", "--dry-run", "--", "data=cifar10", "data.download=false"], "CIFAR-10 not found"),
    (["slurm", "--gpus", "2", "--tasks-per-node", "4", "--dry-run"], "one task per GPU"),
    (["slurm", "--nodes", "zero"], "--nodes must be a positive integer"),
    (["slurm", "--frobnicate"], "unknown option for slurm: --frobnicate"),
    (["orbit"], "unknown mode 'orbit'"),
])
def test_preflight_refuses(args, message, workdir):
    out = launch(args, workdir)
    assert out.returncode != 0
    assert message in out.stderr.strip().splitlines()[-1], out.stderr
    assert not (workdir / "outputs").exists()


def test_gpus_on_a_cpu_partition_are_refused(slurm, workdir):
    out = launch(["slurm", "--gpus", "2", "--dry-run", "--", "+experiment=fashion_mnist_cnn"], workdir)
    assert out.returncode != 0 and "has no GPUs" in out.stderr
