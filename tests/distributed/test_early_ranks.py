"""Ranks > 0 started early by rank 0 (lightdist.distributed.early_ranks): they start before rank 0
builds its Trainer and train as Lightning's own children would; a run that fails before fit
leaves none of them behind; LIGHTDIST_EARLY_RANKS=0 leaves the start to Lightning."""

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightdist.distributed import early_ranks
from tests.helpers.cli import QUIET, REPO, cli_env, read_summary, run_cli, run_dirs

TINY_DDP = ["trainer=cpu_ddp", "trainer.devices=2", "threads_per_rank=1", "data.train_subset=64", "data.val_subset=32",
            "data.batch_size=16", "trainer.max_steps=2", "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
            "test_after_fit=false", *QUIET]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the probe reads process start times from /proc")
@pytest.mark.parametrize("early", [True, False], ids=["early", "off"])
def test_ddp_rank_1_starts_before_rank_0_builds_its_trainer(workdir, early):
    probe = workdir / "probe"
    env = cli_env(PYTHONPATH=str(REPO), TMPDIR=str(workdir), **({} if early else {early_ranks.SWITCH_ENV: "0"}))
    run_cli([*TINY_DDP, "+callbacks.startup_probe._target_=bench.startup_probe.StartupProbe",
             f"+callbacks.startup_probe.path={probe}"], cwd=workdir, env=env)
    (run,) = run_dirs(workdir)
    assert read_summary(run)["global_step"] == 2
    assert (run / "rank1.log").exists()  # rank 1 ran its job as a child of Lightning's launcher does
    rank0, rank1 = (json.loads((workdir / f"probe.{r}.json").read_text()) for r in (0, 1))
    assert (rank1["started"] < rank0["trainer_built"]) is early, (rank0, rank1)
    assert not list(workdir.glob("lightdist-ranks-*"))  # the hand-off folder is removed


def _waiting_children(parent: int) -> set[int]:
    """Processes started by `parent` that wait to be handed a job (LIGHTDIST_EARLY_HANDOFF set)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and early_ranks.HANDOFF_ENV.encode() in (entry / "environ").read_bytes():
                found.add(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_run_failing_before_fit_ends_its_early_ranks(workdir):
    # The data folder is checked after the config is composed, when the ranks are already starting.
    args = [*TINY_DDP, f"data.root={workdir / 'no_such_folder'}", "data.download=false"]
    proc = subprocess.Popen([sys.executable, "-m", "lightdist", *args], cwd=workdir, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    while proc.poll() is None:
        seen |= _waiting_children(proc.pid)
        time.sleep(0.02)
    try:  # the ranks share rank 0's stderr: it ends when they do
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        for pid in seen:
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
        raise AssertionError(f"early ranks {sorted(seen)} outlived rank 0") from None
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lightdist: error:"), err
    assert seen, "no rank was started early"
    left = [pid for pid in seen if Path(f"/proc/{pid}").exists()
            and (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z")]
    assert not left, f"early ranks still running: {left}"


def test_when_ranks_start_early():
    cfg = OmegaConf.create({"trainer": {"devices": 2, "num_nodes": 1}, "strategy": {"start_method": "popen"}})
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_NTASKS",
                                                            "SLURM_PROCID", "TORCHELASTIC_RUN_ID")}
    cases = [({}, [], 2), ({}, ["-m"], 0), ({}, ["--multirun"], 0), ({"trainer": {"devices": 1}}, [], 0),
             ({"trainer": {"devices": "auto"}}, [], 0), ({"trainer": {"devices": [0, 1]}}, [], 2),
             ({"trainer": {"devices": 4096}}, [], 0),
             ({"trainer": {"num_nodes": 2}}, [], 0), ({"strategy": {"start_method": "spawn"}}, [], 0),
             ({"strategy": {"name": "ddp_spawn"}}, [], 0)]
    saved = dict(os.environ)
    try:
        for change, flags, expected in cases:
            os.environ.clear()
            os.environ.update(env)
            assert early_ranks.wanted(OmegaConf.merge(cfg, change), flags) == expected, (change, flags)
        for name, value in [("LOCAL_RANK", "1"), ("TORCHELASTIC_RUN_ID", "x"), ("SLURM_NTASKS", "2"),
                            (early_ranks.SWITCH_ENV, "0")]:
            os.environ.clear()
            os.environ.update(env, **{name: value})
            assert early_ranks.wanted(cfg, []) == 0, name
    finally:
        os.environ.clear()
        os.environ.update(saved)
