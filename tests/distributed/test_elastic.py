"""Elastic restarts for real: torchrun --max-restarts restarts a group whose rank was killed (kill -9),
and the new ranks resume from the periodic last.ckpt in the same run directory and metrics file.
Also the `checkpoint` config node and the atomic checkpoint write that make it safe."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from lightdist.callbacks.last_checkpoint import LastCheckpoint
from lightdist.checkpoints import AtomicCheckpointIO
from lightdist.config.checks import check_builds
from lightdist.config.compose import compose
from lightdist.config.resolvers import register
from lightdist.errors import ConfigError
from tests.distributed.test_torchrun import TINY, free_port
from tests.helpers.cli import REPO, cli_env, read_summary, run_dirs, stop_processes

STEPS, EVERY, HANG_AT = 20, 3, 5  # 2 epochs of 10 steps; last.ckpt at steps 3, 6, 9, 10 (epoch end)...


def workers_of(agents: list[int]) -> dict[int, int]:
    """RANK -> pid of the worker processes that torchrun's agents started (their direct children)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) in agents:
                env = dict(v.split("=", 1) for v in (entry / "environ").read_text().split("\0") if "=" in v)
                found[int(env["RANK"])] = int(entry.name)
        except (OSError, KeyError, ValueError):  # a process that ended meanwhile
            continue
    return found


def wait_for(path: Path, agents: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert all(a.poll() is None for a in agents) and time.time() < deadline, f"{path} never appeared"
        time.sleep(0.1)


# One node running both ranks, or two torchrun agents on this machine ("nodes") meeting through c10d,
# where the agent whose rank is healthy restarts it without counting a restart.
LAYOUTS = {
    "one_node": [["--standalone", "--nproc-per-node=2", "trainer.devices=2"]],
    "two_nodes": [["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:{port}",
                   "--rdzv-id=elastic7", "trainer.devices=1", "trainer.num_nodes=2"]] * 2,
}


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds rank 1 through /proc")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_killed_rank_restarts_the_group_from_the_periodic_checkpoint(workdir, layout):
    """Rank 1 stops at step 5 (only in torchrun's first attempt) after last.ckpt of step 3 exists; the test
    kills it with SIGKILL. torchrun restarts the ranks, which resume from last.ckpt in the same run
    directory: one run, every step's loss logged once, run.json saying what happened."""
    mark, port = workdir / "hung", free_port()
    agents, logs = [], []
    for node, options in enumerate(LAYOUTS[layout]):
        agent_options = [o.format(port=port) for o in options if o.startswith("--")]
        logs.append(open(workdir / f"node{node}.log", "w"))
        agents.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--max-restarts=1", *agent_options, "-m", "lightdist",
             *TINY, "trainer=cpu_ddp", *[o for o in options if not o.startswith("--")], "trainer.max_epochs=2",
             "trainer.limit_train_batches=10", "data.train_subset=640", "trainer.log_every_n_steps=1",
             f"checkpoint.every_n_steps={EVERY}", "+callbacks.hang._target_=tests.helpers.hang_once.HangOnce",
             f"+callbacks.hang.step={HANG_AT}", f"+callbacks.hang.mark={mark}"],
            cwd=workdir, env=cli_env(PYTHONPATH=str(REPO)), stdout=logs[-1], stderr=subprocess.STDOUT))
    try:
        wait_for(mark, agents, timeout=240)
        workers = workers_of([a.pid for a in agents])
        assert sorted(workers) == [0, 1], workers
        os.kill(workers[1], signal.SIGKILL)
        codes = [agent.wait(timeout=240) for agent in agents]
    finally:
        stop_processes(agents, logs)
    tails = "\n".join(f"--- node {n} ---\n{(workdir / f'node{n}.log').read_text()[-4000:]}"
                      for n in range(len(agents)))
    assert codes == [0] * len(agents), tails

    (run_dir,) = run_dirs(workdir, "fashion_mnist_cnn")  # the restarted ranks came back to the same directory
    first, second = json.loads((run_dir / "run.json").read_text())["segments"]
    assert first["last_checkpoint_step"] == EVERY and first.get("status") != "completed"
    assert second["status"] == "completed" and second["start_step"] == EVERY
    assert second["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    if layout == "one_node":  # (with two agents, rank 0's may be the one that did not count)
        assert (first["torchrun_restart_count"], second["torchrun_restart_count"]) == (0, 1)
    assert read_summary(run_dir)["global_step"] == STEPS
    # the steps between the checkpoint and the kill were trained (and logged) twice: the file keeps one of each
    with open(run_dir / "metrics.csv", newline="") as f:
        logged = [int(float(r["step"])) for r in csv.DictReader(f) if r.get("train/loss")]
    assert sorted(logged) == list(range(STEPS)), logged
    # the last write of last.ckpt is the final epoch end (step 20 is no multiple of 3)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == STEPS


@pytest.fixture(scope="module")
def resolvers():
    register()


def last_checkpoint(overrides: list[str]) -> LastCheckpoint:
    cfg = compose(overrides, "config")
    cfg.paths.output_dir = "/nonexistent/run"
    return instantiate(cfg.callbacks.last_checkpoint)


def test_the_checkpoint_node_sets_the_triggers_of_last_ckpt(resolvers):
    default = last_checkpoint([])
    assert (default.every_n_epochs, default._every_n_train_steps, default._train_time_interval) == (1, 0, None)
    steps = last_checkpoint(["checkpoint.every_n_steps=50"])
    assert (steps.every_n_epochs, steps._every_n_train_steps) == (1, 50)  # epoch ends as well
    minutes = last_checkpoint(["checkpoint.every_minutes=0.5"])
    assert minutes.every_n_epochs == 1 and minutes._train_time_interval.total_seconds() == 30
    assert steps.dirpath == "/nonexistent/run/checkpoints" and steps.filename == "last"


@pytest.mark.parametrize("overrides, named", [
    (["checkpoint.every_n_steps=0"], "checkpoint.every_n_steps=0"),
    (["checkpoint.every_n_steps=-5"], "checkpoint.every_n_steps=-5"),
    (["checkpoint.every_n_steps=2.5"], "positive integer"),
    (["checkpoint.every_minutes=-1"], "checkpoint.every_minutes=-1"),
    (["checkpoint.every_minutes=abc"], "checkpoint.every_minutes='abc'"),
    (["checkpoint.every_n_steps=10", "checkpoint.every_minutes=5"], "both set"),
])
def test_bad_checkpoint_values_end_in_one_line_naming_the_fix(resolvers, overrides, named):
    with pytest.raises(ConfigError, match="checkpoint.every_") as refused:
        check_builds(compose(overrides, "config"))
    assert named in str(refused.value) and "\n" not in str(refused.value)


class _Saves(Callback):
    def __init__(self):
        self.steps = []

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.steps.append(trainer.global_step)


@pytest.mark.parametrize("every, saved", [(None, [4, 8]), (3, [3, 4, 6, 8])])
def test_last_ckpt_every_n_steps_and_at_every_epoch_end(tmp_path, every, saved):
    saves = _Saves()
    trainer = Trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=0, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                      callbacks=[LastCheckpoint(str(tmp_path), every_n_steps=every), saves])
    trainer.fit(BoringModel())
    assert saves.steps == saved
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_an_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 3}, path)

    def killed_midway(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", killed_midway)
        with pytest.raises(KeyboardInterrupt):
            io.save_checkpoint({"global_step": 6}, path)
    assert torch.load(path, weights_only=True) == {"global_step": 3}
    # the file is written beside its final name, not through the temporary directory (another filesystem)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "missing"))
    io.save_checkpoint({"global_step": 9}, path)
    assert torch.load(path, weights_only=True) == {"global_step": 9}
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_a_torchrun_rank_resumes_from_its_run_directory_whatever_its_restart_count(tmp_path, monkeypatch):
    """Every rank of a torchrun job decides alike: a healthy node's agent restarts its ranks without counting."""
    from lightdist.checkpoints import resolve_ckpt_path

    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, tmp_path / "checkpoints" / "last.ckpt")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert resolve_ckpt_path(None, tmp_path) is None  # a plain run starts fresh
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job7")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert resolve_ckpt_path(None, tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    assert resolve_ckpt_path(None, tmp_path / "fresh") is None


def test_restarted_ranks_meet_in_a_store_of_their_own(monkeypatch):
    """Attempt 1 keeps the agent's store; from attempt 2 on, rank 0 publishes a fresh port that every rank uses."""
    from datetime import timedelta

    from torch.distributed import TCPStore

    from lightdist.distributed.torchrun import isolate_restarted_group

    port = free_port()
    agent = TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=30))
    seen = {}
    for attempt in (1, 2):
        for rank in (0, 1):  # rank 0 first: rank 1's read would wait for it
            monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
            monkeypatch.setenv("MASTER_PORT", str(port))
            monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
            monkeypatch.setenv("RANK", str(rank))
            isolate_restarted_group()
            seen[attempt, rank] = (os.environ["MASTER_PORT"], os.environ["TORCHELASTIC_USE_AGENT_STORE"])
    assert seen[1, 0] == seen[1, 1] == (str(port), "True")
    assert seen[2, 0] == seen[2, 1] and seen[2, 0][0] != str(port) and seen[2, 0][1] == "False"
    del agent
