"""DDP's overlap options and communication hooks, through the real CLI with 2 gloo ranks.

Every run is float64 and trains on the same batch each step (overfit_batches=1: no shuffling),
so the only difference between two runs is what the options change in the gradient all-reduce.
"""

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightdist.distributed.comm_hooks import check_strategy_comm_hook
from lightdist.errors import ConfigError
from tests.helpers.cli import QUIET, REPO, cli_env, run_cli, run_dirs

STEPS = 6
COMMON = ["trainer=cpu_ddp", "strategy=ddp", "trainer.precision=64-true", "model.norm=group", "model.dropout=0.0",
          "model.channels=[8,16]", "model.hidden=64", "data.augment=null", "data.train_subset=256",
          "data.val_subset=64", "data.test_subset=64", "data.batch_size=32", f"trainer.max_steps={STEPS}",
          "trainer.overfit_batches=1", "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
          "test_after_fit=false", "trainer.log_every_n_steps=1", "optimizer=sgd", "optimizer.lr=0.02",
          "scheduler=none", "logger=csv", "callbacks.model_checkpoint=null", *QUIET]
# bfloat16 keeps 8 significant bits: rounding to it moves a value by at most 2**-8 of itself.
BF16_UNIT_ROUNDOFF = 2.0 ** -8


def losses(args: list[str], cwd: Path, env: dict | None = None) -> list[str]:
    run_cli([*COMMON, *args], cwd=cwd, env=env)
    (run_dir,) = run_dirs(cwd)
    with open(run_dir / "metrics.csv") as f:
        rows = sorted((int(r["step"]), r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss"))
    assert [step for step, _ in rows] == list(range(STEPS)), rows
    return [loss for _, loss in rows]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[list[str], dict]:
    """The default's losses, and DDP's bucket limits in that run."""
    cwd = tmp_path_factory.mktemp("default")
    probe = cwd / "buckets.json"
    run_losses = losses(["+callbacks.buckets._target_=tests.helpers.bucket_probe.BucketCaps",
                         f"+callbacks.buckets.path={probe}"], cwd, env=cli_env(PYTHONPATH=str(REPO)))
    return run_losses, json.loads(probe.read_text())


@pytest.fixture(scope="module")
def default_losses(default_run) -> list[str]:
    return default_run[0]


def test_gloo_ranks_all_reduce_in_buckets_of_25_mb_from_the_first_on(default_run):
    """strategy.bucket_cap_mb=null on gloo: no small first bucket (torch's 1 MB one, for NCCL's overlap)."""
    assert default_run[1] == {"backend": "gloo", "bucket_bytes_cap": 25 * 2**20, "small_first_bucket": False}


def test_static_graph_without_bucket_view_equals_default(default_losses, tmp_path):
    """Both options change how DDP schedules the all-reduce, not what it computes: in float64, the
    losses equal the default's to the last digit written."""
    assert losses(["strategy.static_graph=true", "strategy.gradient_as_bucket_view=false",
                   "strategy.bucket_cap_mb=25"], tmp_path) == default_losses


def test_bf16_comm_hook_stays_within_its_rounding(default_losses, tmp_path):
    """bf16 compression rounds each rank's gradient and their mean to 8 significant bits (at most 3
    roundings of 2**-8 relative each). To first order, the loss then moves by at most that fraction
    of what training moved it, since every update is off by at most that fraction of itself; x4 for
    the higher-order terms. The hook must change the run (else it was not used) and stay within that."""
    exact = [float(x) for x in default_losses]
    bf16 = [float(x) for x in losses(["strategy.comm_hook=bf16"], tmp_path)]
    assert bf16[0] == exact[0]  # the first forward pass precedes any all-reduce
    assert bf16 != exact, "the bf16 hook changed nothing: was it registered?"
    progress = max(abs(exact[0] - loss) for loss in exact)
    tolerance = 4 * 3 * BF16_UNIT_ROUNDOFF * progress
    worst = max(abs(a - b) for a, b in zip(bf16, exact))
    assert worst <= tolerance, f"bf16 losses {bf16} vs exact {exact}: {worst:.3g} > {tolerance:.3g}"


@pytest.mark.parametrize(("strategy", "message"), [
    ({"_target_": "lightdist.distributed.sharding.fsdp", "comm_hook": "bf16"}, "strategy fsdp has none"),
    ({"_target_": "lightdist.distributed.sharding.deepspeed", "comm_hook": "fp16"}, "deepspeed has none"),
    ({"_target_": "lightning.pytorch.strategies.DDPStrategy", "comm_hook": "int8"}, "not a DDP communication hook"),
    ({"_target_": "lightning.pytorch.strategies.DDPStrategy", "comm_hook": "powersgd", "powersgd_rank": 0},
     "powersgd_rank=0 must be an integer >= 1"),
    ({"_target_": "lightning.pytorch.strategies.DDPStrategy", "comm_hook": "powersgd", "powersgd_start_step": 1},
     "powersgd_start_step=1 must be an integer >= 2"),
])
def test_impossible_comm_hooks_are_refused(strategy, message):
    with pytest.raises(ConfigError, match=message):
        check_strategy_comm_hook(OmegaConf.create({"accelerator": "cpu"}), OmegaConf.create(strategy))


def test_valid_comm_hooks_pass_preflight():
    for name in ("fp16", "bf16", "powersgd", None):
        check_strategy_comm_hook(OmegaConf.create({"accelerator": "cpu"}),
                                 OmegaConf.create({"_target_": "lightning.pytorch.strategies.DDPStrategy",
                                                   "comm_hook": name}))


def test_refusal_is_one_line(tmp_path):
    proc = run_cli(["preflight", "trainer=cpu_ddp", "strategy=fsdp", "+strategy.comm_hook=bf16"], cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "lightdist: error: strategy.comm_hook=bf16 is a DDP communication hook; strategy fsdp has none "
        "(strategy.comm_hook=null, or strategy=ddp)"]


def test_batchnorm_statistics_are_not_broadcast_each_step_but_before_each_validation(tmp_path):
    """broadcast_buffers=false (the default): during training each rank's BatchNorm statistics follow
    its own batches (no collective before each forward); every validation starts from rank 0's on
    every rank, so the ranks evaluate their shards with one model, the one the checkpoints hold."""
    probe = tmp_path / "buffers"
    proc = run_cli(["trainer=cpu_ddp", "strategy=ddp", "trainer.precision=64-true", "model.norm=batch",
             "model.channels=[8,16]", "model.hidden=64", "data.train_subset=256", "data.val_subset=64",
             "data.batch_size=32", "trainer.max_epochs=2", "trainer.num_sanity_val_steps=0", "test_after_fit=false",
             "+callbacks.buffers._target_=tests.helpers.buffer_probe.BufferDigests", f"+callbacks.buffers.path={probe}",
             *QUIET], cwd=tmp_path, env=cli_env(PYTHONPATH=str(REPO)))
    ranks = [json.loads(Path(f"{probe}.{rank}").read_text()) for rank in (0, 1)]
    assert len(ranks[0]["train"]) == 8 and len(ranks[0]["validation"]) == 2
    assert all(a != b for a, b in zip(ranks[0]["train"], ranks[1]["train"]))  # their own batches' statistics
    assert ranks[0]["validation"] == ranks[1]["validation"]
    assert "`broadcast_buffers` is deprecated" not in proc.stderr  # torch >= 2.14 takes forward_sync_buffers
    assert "LeafSpec" not in proc.stderr  # torch >= 2.14's deprecation met in Lightning's code, left out
