"""Sharding strategies on CPU with 2 gloo processes: same losses as DDP, real sharding,
checkpoints that save, convert and resume.

Every run trains the same small model on the same samples: GroupNorm (per-sample, so the
batch split does not matter), no dropout, no augmentation, fp32, SGD with momentum. Under
those conditions DDP, FSDP and ZeRO 1/2/3 compute bit-identical updates: each rank does the
same arithmetic on the same samples whatever the sharding, and averaging over 2 ranks is
exact ((a + b) / 2 is correctly rounded in any order). Measured: losses and weights equal to
the last bit with 1 and 2 threads per rank, on AVX-512 and on AVX2 kernels (the AMD path,
forced by ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2). Float64 would make this hold by
construction, but Lightning's FSDP and DeepSpeed precision plugins take no 64-true.

The tolerances are no allowance for rounding: here a last-bit difference grows ~4x per SGD
step (the same strategy with 1 vs 2 threads per rank ends 8e-3 apart in loss after 8 steps),
so a strategy that computed differently would fail them anyway. A real fault misses by far
more: averaging replaced by summing moves the loss by 5e-2 within 8 steps even at lr 0.01.
"""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightdist.checkpoints import consolidate, load_consolidated
from lightdist.distributed.strategy import DDPStrategy, build_strategy
from tests.helpers.cli import QUIET, REPO, cli_env, read_summary, run_cli, run_dirs

STRATEGIES = ["ddp", "fsdp", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3"]
COMMON = ["trainer=cpu_ddp", "model.norm=group", "model.dropout=0.0", "model.channels=[8,16]", "model.hidden=64",
          "data.augment=null", "data.train_subset=512", "data.val_subset=64", "data.test_subset=64",
          "data.batch_size=32", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
          "trainer.log_every_n_steps=1", "trainer.num_sanity_val_steps=0", "optimizer=sgd", "optimizer.lr=0.05",
          "scheduler=none", "logger=csv", *QUIET]
# ZeRO-3 keeps small parameters whole unless told otherwise; this model is all small parameters.
EXTRA = {"deepspeed_stage_3": ["strategy.param_persistence_threshold=0"],
         "deepspeed_stage_3_offload": ["strategy.param_persistence_threshold=0"]}


def train_losses(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    return [float(r["train/loss"]) for r in sorted(rows, key=lambda r: int(r["step"]))]


@pytest.fixture(scope="module")
def two_epoch_runs(tmp_path_factory) -> dict[str, Path]:
    """Each strategy: 2 epochs of 4 steps, then test from its best checkpoint."""
    runs = {}
    for strategy in STRATEGIES:
        cwd = tmp_path_factory.mktemp(strategy)
        run_cli([f"strategy={strategy}", "trainer.max_epochs=2", *EXTRA.get(strategy, []), *COMMON], cwd=cwd)
        (runs[strategy],) = run_dirs(cwd)
    return runs


@pytest.mark.parametrize("strategy", STRATEGIES[1:])
def test_losses_match_ddp(two_epoch_runs, strategy):
    reference = train_losses(two_epoch_runs["ddp"])
    losses = train_losses(two_epoch_runs[strategy])
    assert len(reference) == len(losses) == 8
    # bit-identical in practice (see the module docstring); no rounding allowance is needed
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(reference), rtol=1e-4, atol=1e-5)
    assert losses[-1] < losses[0]  # and they learn


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_stage_3"])
def test_full_sharding_halves_model_state(two_epoch_runs, strategy):
    ddp = read_summary(two_epoch_runs["ddp"])["model_state_bytes_per_rank"]
    sharded = read_summary(two_epoch_runs[strategy])["model_state_bytes_per_rank"]
    assert len(ddp) == len(sharded) == 2
    for rank in range(2):
        # every rank holds about half of the parameters (flattening pads by a few bytes)
        assert sharded[rank]["parameters"] == pytest.approx(ddp[rank]["parameters"] / 2, rel=0.01)
        assert sharded[rank]["total"] <= 0.51 * ddp[rank]["total"]


def test_zero_stages_shard_progressively(two_epoch_runs):
    total = {s: read_summary(two_epoch_runs[s])["model_state_bytes_per_rank"][0]["total"] for s in STRATEGIES}
    assert total["deepspeed_stage_3"] < total["deepspeed_stage_2"] <= total["deepspeed_stage_1"] < total["ddp"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_checkpoints_convert_to_one_file(two_epoch_runs, strategy, tmp_path):
    """Sharded or not, `consolidate` gives the full weights, equal to DDP's after the same training."""
    run_dir = two_epoch_runs[strategy]
    summary = read_summary(run_dir)
    assert summary["test"]["test/acc"] > 0  # tested from its own best checkpoint
    out = consolidate(run_dir / "checkpoints" / "last.ckpt", tmp_path / "model.ckpt")
    converted = torch.load(out, weights_only=False)
    reference = load_consolidated(two_epoch_runs["ddp"] / "checkpoints" / "last.ckpt")
    assert converted["global_step"] == 8 and converted["state_dict"].keys() == reference["state_dict"].keys()
    for key, value in reference["state_dict"].items():  # equal to the last bit in practice
        torch.testing.assert_close(converted["state_dict"][key], value, rtol=1e-3, atol=1e-4, msg=key)


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_stage_3"])
def test_resume_continues_step_and_optimizer_state(two_epoch_runs, strategy, tmp_path):
    """1 epoch, then resume for the 2nd from last.ckpt == 2 epochs straight (momentum buffers included)."""
    args = [f"strategy={strategy}", *EXTRA.get(strategy, []), *COMMON, "test_after_fit=false"]
    run_cli([*args, "trainer.max_epochs=1"], cwd=tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    run_cli([*args, "trainer.max_epochs=2", f"run_dir={run_dir}", "ckpt_path=last"], cwd=tmp_path)
    assert read_summary(run_dir)["global_step"] == 8
    assert len(train_losses(run_dir)) == 8  # each step logged once across the two segments
    # same machine, strategy and thread count: deterministic kernels make the two runs equal to the
    # last bit; anything resumed differently (momentum buffers, data order) shows far above 1e-5.
    torch.testing.assert_close(torch.tensor(train_losses(run_dir)),
                               torch.tensor(train_losses(two_epoch_runs[strategy])), rtol=1e-5, atol=1e-6)
    resumed = load_consolidated(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    straight = load_consolidated(two_epoch_runs[strategy] / "checkpoints" / "last.ckpt")["state_dict"]
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("strategy", ["deepspeed_stage_2_offload", "deepspeed_stage_3_offload"])
def test_offload_variants_train(two_epoch_runs, strategy, tmp_path):
    run_cli([f"strategy={strategy}", "trainer.max_steps=3", "test_after_fit=false", *EXTRA.get(strategy, []),
             *COMMON], cwd=tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    torch.testing.assert_close(torch.tensor(train_losses(run_dir)),
                               torch.tensor(train_losses(two_epoch_runs["ddp"])[:3]), rtol=1e-4, atol=1e-5)


def test_ddp_ranks_release_their_process_group_at_exit(tmp_path):
    """A ddp_spawn rank exits right after fit() or test(); with its gloo group still alive it could
    abort in interpreter shutdown. lightdist's DDPStrategy ends spawned ranks without finalization
    (atexit handlers still run), and a failing rank still fails."""
    from omegaconf import OmegaConf

    trainer = OmegaConf.create({"accelerator": "cpu", "precision": "32-true"})
    for name in ("ddp", "ddp_spawn", "ddp_fork", "fsdp"):
        strategy = build_strategy(OmegaConf.load(REPO / "conf" / "strategy" / f"{name}.yaml"), trainer)
        assert (type(strategy) is DDPStrategy) == (name != "fsdp"), name
    # a sentinel on `sys` is deleted only when the interpreter finalizes
    (tmp_path / "spawned.py").write_text("""if True:
        import atexit, os, sys
        import torch
        from lightning.fabric.plugins.environments import LightningEnvironment
        from lightning.pytorch.accelerators import CPUAccelerator
        from lightdist.distributed.strategy import DDPStrategy

        class Sentinel:
            def __del__(self, write=os.write):
                write(1, b"finalized\\n")

        def rank(fail):
            sys.sentinel = Sentinel()
            atexit.register(lambda: print("atexit ran", flush=True))
            if fail:
                raise RuntimeError("rank failed")
            return "result"

        if __name__ == "__main__":
            strategy = DDPStrategy(start_method="spawn", accelerator=CPUAccelerator(),
                                   parallel_devices=[torch.device("cpu")],
                                   cluster_environment=LightningEnvironment())
            strategy._configure_launcher()
            print("returned", strategy.launcher.launch(rank, False), flush=True)
            try:
                strategy.launcher.launch(rank, True)
            except Exception as exc:
                print("raised", type(exc).__name__, "exit code", strategy.launcher.procs[0].exitcode, flush=True)
    """)
    proc = subprocess.run([sys.executable, str(tmp_path / "spawned.py")], capture_output=True, text=True,
                          env=cli_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["atexit ran", "returned result"], proc.stdout
    assert lines[-1] == "raised ProcessRaisedException exit code 1", proc.stdout + proc.stderr
