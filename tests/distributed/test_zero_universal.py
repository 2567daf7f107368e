"""DeepSpeed ZeRO checkpoints resumed at another world size through DeepSpeed's universal checkpoint.

A ZeRO-2 and a ZeRO-3 run each train 2 Adam steps on 2 gloo ranks and save; copies of the run
directory resume on 1 rank (and ZeRO-2 on 4), which converts the checkpoint, and on 2 ranks, which
does not. A probe callback (tests/helpers/zero_probe.py) writes the full fp32 weights and Adam
moments, gathered from every rank's partition, when the checkpoint is saved and when the resumed
run starts training: they must be equal to the last bit, since a universal checkpoint only moves
fp32 values between files and partitions and no arithmetic touches them.
"""

import os
import shutil
from pathlib import Path

import pytest
import torch

from lightdist.checkpoints import verify
from lightdist.distributed.zero_universal import (
    convert_to_universal,
    saved_world_size,
    universal_dir,
)
from lightdist.errors import CheckpointError
from tests.distributed.test_strategies import train_losses
from tests.helpers.cli import QUIET, REPO, cli_env, read_summary, run_cli, run_dirs

COMMON = ["model.norm=group", "model.dropout=0.0", "model.channels=[8,16]", "model.hidden=64",
          "data.augment=null", "data.train_subset=512", "data.val_subset=64", "data.test_subset=64",
          "trainer.limit_train_batches=4", "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
          "trainer.num_sanity_val_steps=0", "optimizer=adam", "scheduler=none", "logger=csv",
          "test_after_fit=false", "strategy.param_persistence_threshold=0",  # ZeRO-3: partition every parameter
          "+callbacks.zero._target_=tests.helpers.zero_probe.ZeroState", *QUIET]
# The same global batch (64 samples a step) at every world size.
WORLD = {1: ["trainer=cpu", "data.batch_size=64"],
         2: ["trainer=cpu_ddp", "data.batch_size=32"]}
CONVERTS = "resuming from its universal form"  # the info line of a conversion


def probe_env() -> dict[str, str]:
    """The probe callback is imported by the CLI from this repository (the package may be a wheel install)."""
    return cli_env(PYTHONPATH=str(REPO))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Per ZeRO stage: a run directory whose last.ckpt was saved after 2 steps on 2 ranks."""
    runs = {}
    for stage in (2, 3):
        cwd = tmp_path_factory.mktemp(f"stage{stage}")
        run_cli([f"strategy=deepspeed_stage_{stage}", *WORLD[2], "trainer.max_steps=2", *COMMON,
                 f"+callbacks.zero.path={cwd / 'probe'}"], cwd=cwd, env=probe_env())
        (runs[stage],) = run_dirs(cwd)
    return runs


def _resume(saved_run: Path, stage: int, world: int, tmp_path: Path, check: bool = True):
    """A copy of the saved run, resumed on `world` ranks for 2 more steps; the copy and the CLI's result."""
    run_dir = tmp_path / "run"
    shutil.copytree(saved_run, run_dir)
    proc = run_cli([f"strategy=deepspeed_stage_{stage}", *WORLD[world], "trainer.max_steps=4", *COMMON,
                    f"+callbacks.zero.path={tmp_path / 'probe'}", f"run_dir={run_dir}", "ckpt_path=last"],
                   cwd=tmp_path, check=check, env=probe_env())
    return run_dir, proc


def _assert_resumed_exactly(saved_run: Path, run_dir: Path, tmp_path: Path, world: int) -> None:
    before = torch.load(saved_run.parents[2] / "probe.step2", weights_only=True)
    after = torch.load(tmp_path / "probe.start", weights_only=True)
    assert (before["world_size"], after["world_size"]) == (2, world)
    assert before["global_step"] == after["global_step"] == 2
    assert before["adam_steps"] == after["adam_steps"] == [2]
    assert before["state"].keys() == after["state"].keys()
    for name, values in before["state"].items():
        assert values["exp_avg"].abs().sum() > 0, name  # moments that a fresh optimizer would not have
        for key, value in values.items():
            assert torch.equal(after["state"][name][key], value), f"{name} {key}"
    # and training goes on from there: steps 3 and 4 trained and saved by the resumed run
    assert read_summary(run_dir)["global_step"] == 4
    assert (tmp_path / "probe.step4").is_file()
    losses = train_losses(run_dir)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize(("stage", "world"), [(2, 1), (3, 1)])
def test_resume_at_another_world_size_converts_and_restores_state(saved, stage, world, tmp_path):
    run_dir, proc = _resume(saved[stage], stage, world, tmp_path)
    assert (proc.stdout + proc.stderr).count(CONVERTS) == 1
    _assert_resumed_exactly(saved[stage], run_dir, tmp_path, world)
    # the resumed run saved last.ckpt again, at its own world size; the universal form of the old one went
    last = run_dir / "checkpoints" / "last.ckpt"
    assert saved_world_size(last) == world and not universal_dir(last).exists()


def test_resume_at_the_same_world_size_does_not_convert(saved, tmp_path):
    run_dir, proc = _resume(saved[2], 2, 2, tmp_path)
    assert CONVERTS not in proc.stdout + proc.stderr
    _assert_resumed_exactly(saved[2], run_dir, tmp_path, 2)


def _copy_checkpoint(saved_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved_run / "checkpoints" / "last.ckpt", tmp_path / "last.ckpt"))


def test_convert_by_hand_once_and_again_when_the_checkpoint_changes(saved, tmp_path):
    ckpt = _copy_checkpoint(saved[2], tmp_path)
    out = run_cli(["convert", f"checkpoint={ckpt}", "to=universal"], cwd=tmp_path).stdout.strip().splitlines()[-1]
    assert Path(out) == universal_dir(ckpt) and (Path(out) / "checkpoint" / "zero" / "optimizer_state.pt").is_file()
    with pytest.raises(CheckpointError, match="is the universal form of a DeepSpeed checkpoint"):
        verify(out)  # not a checkpoint to pass: resumes find it beside the one it was made from
    marker = Path(out) / "latest_universal"
    made = marker.stat().st_mtime_ns
    assert convert_to_universal(ckpt) == Path(out)
    assert marker.stat().st_mtime_ns == made  # kept: made from this very checkpoint
    shard = ckpt / "checkpoint" / "mp_rank_00_model_states.pt"
    stat = shard.stat()  # as if a newer checkpoint had been saved under the same name
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    os.utime(marker, ns=(made - 10**9, made - 10**9))
    convert_to_universal(ckpt)
    assert marker.stat().st_mtime_ns > made  # made again


def test_incomplete_or_unconvertible_checkpoint_is_one_line(saved, tmp_path):
    ckpt = _copy_checkpoint(saved[2], tmp_path)
    shard = ckpt / "checkpoint" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    content = shard.read_bytes()
    shard.unlink()  # a rank's shard lost: converting the rest would silently drop its optimizer state
    with pytest.raises(CheckpointError, match="saved by 2 processes but holds 1 optimizer shards"):
        convert_to_universal(ckpt)
    torch.save({"not": "a ZeRO shard"}, shard)  # readable, but not what DeepSpeed's converter expects
    with pytest.raises(CheckpointError, match="cannot convert DeepSpeed checkpoint") as error:
        convert_to_universal(ckpt)
    assert "resume it with 2 processes, as it was saved" in str(error.value)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial conversion left behind
    shard.write_bytes(content[: len(content) // 2])  # truncated: refused before anything unpickles it
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        convert_to_universal(ckpt)
    shard.unlink()
    # the automatic conversion of a resume ends the same way: one line, exit code 2
    saved_copy = tmp_path / "saved"
    shutil.copytree(saved[2], saved_copy)
    (saved_copy / "checkpoints" / "last.ckpt" / "checkpoint" / shard.name).unlink()
    _, proc = _resume(saved_copy, 2, 1, tmp_path / "resume", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("lightdist: error:")]
    assert len(lines) == 1 and "holds 1 optimizer shards" in lines[0], proc.stderr[-3000:]
