"""torchrun for real: a 2-node job as two torchrun agents on localhost (static and c10d rendezvous)
writes one run directory, and a rank that hangs ends the job after distributed.timeout_s."""

import json
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers.cli import REPO, cli_env, read_summary, run_cli, run_dirs, stop_processes

TINY = ["+experiment=fashion_mnist_cnn", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "trainer.num_sanity_val_steps=0",
        "data.train_subset=256", "data.val_subset=64", "data.test_subset=64", "data.batch_size=32",
        "threads_per_rank=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_node_job(rendezvous: list[str], cwd: Path, static: bool, timeout: float = 240) -> None:
    """Two torchrun agents on this machine, one per "node", each starting one rank of a 2-node job."""
    agents, logs = [], []
    for node in (0, 1):
        extra = [f"--node-rank={node}"] if static else []  # c10d ranks the nodes itself
        log = open(cwd / f"node{node}.log", "w")
        logs.append(log)
        agents.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", *rendezvous, *extra,
             "-m", "lightdist", *TINY, "trainer=cpu_ddp", "trainer.devices=1", "trainer.num_nodes=2"],
            cwd=cwd, env=cli_env(), stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = [agent.wait(timeout=timeout) for agent in agents]
    finally:
        stop_processes(agents, logs)
    tails = "\n".join(f"--- node {n} ---\n{(cwd / f'node{n}.log').read_text()[-3000:]}" for n in (0, 1))
    assert codes == [0, 0], tails


@pytest.mark.parametrize("kind", ["static", "c10d"])
def test_two_torchrun_nodes_share_one_run(kind, workdir):
    port = free_port()
    rendezvous = (["--master-addr=127.0.0.1", f"--master-port={port}"] if kind == "static" else
                  ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=job42"])
    two_node_job(rendezvous, workdir, static=kind == "static")
    outputs = workdir / "outputs" / "fashion_mnist_cnn"
    # one directory at all (a rank on node 1 that named the run on its own left an empty one before)
    (run_dir,) = outputs.iterdir()
    assert run_dirs(workdir, "fashion_mnist_cnn") == [run_dir]
    # c10d: named by the rendezvous id; static: by the first rank's start time, read by the other from the store
    assert run_dir.name == "torchrun-job42" if kind == "c10d" else run_dir.name.startswith("torchrun-20")
    assert len(list(outputs.rglob("metrics.csv"))) == 1 and len(list(outputs.rglob("hparams.yaml"))) == 1
    summary = read_summary(run_dir)
    assert summary["world_size"] == 2 and summary["global_step"] == 3
    assert len(json.loads((run_dir / "run.json").read_text())["segments"]) == 1


def test_agreed_value_is_the_first_ranks(monkeypatch):
    """Static rendezvous: every rank reads the run name the first rank put in torchrun's store."""
    from torch.distributed import TCPStore

    from lightdist.distributed import torchrun

    port = free_port()
    server = TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=30))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    assert [torchrun.agreed_value("k", mine) for mine in ("first", "second")] == ["first", "first"]
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    with pytest.raises(torchrun.ConfigError, match="--rdzv-id"):
        torchrun.agreed_value("k", "third")
    del server


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_stage_2"])
def test_every_strategy_gets_the_collective_timeout(name):
    from lightning.pytorch.strategies import StrategyRegistry

    from lightdist.distributed.strategy import build_strategy

    trainer = OmegaConf.create({"accelerator": "cpu", "precision": "32-true"})
    strategy = build_strategy(OmegaConf.load(REPO / "conf" / "strategy" / f"{name}.yaml"), trainer, 8, timeout_s=7)
    assert strategy._timeout == timedelta(seconds=7)
    # strategies Lightning builds from a name ("auto" picks "ddp") get it through its registry
    saved = {key: dict(entry, init_params=dict(entry["init_params"])) for key, entry in StrategyRegistry.items()}
    try:
        assert build_strategy(OmegaConf.create({"name": "auto"}), trainer, timeout_s=9) == "auto"
        assert StrategyRegistry.get("ddp")._timeout == timedelta(seconds=9)
    finally:
        StrategyRegistry.update(saved)


def test_a_hung_rank_ends_the_job_after_the_timeout(workdir):
    """Rank 1 stops responding at step 2: rank 0's next collective gives up after distributed.timeout_s,
    and the job ends with one line naming the option, not after torch's default of 30 minutes. (The timeout
    also bounds the ranks' start-up rendezvous: too short a one would fail there on a loaded machine.)"""
    mark, timeout_s = workdir / "hang_started", 20
    proc = run_cli([*TINY, "trainer=cpu_ddp", "trainer.limit_train_batches=6", f"distributed.timeout_s={timeout_s}",
                    "+callbacks.hang._target_=tests.helpers.hang.Hang", f"+callbacks.hang.mark={mark}"],
                   cwd=workdir, check=False, timeout=180, env=cli_env(PYTHONPATH=str(REPO)))
    ended = time.time()
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lightdist: error:")]
    assert len(errors) == 1 and "distributed.timeout_s" in errors[0] and "Traceback" not in proc.stderr, \
        proc.stderr[-4000:]
    hung_for = ended - float(mark.read_text())
    assert timeout_s - 1 <= hung_for < timeout_s + 30, hung_for
