"""Sharded (DCP) checkpoints: lightdist.distributed.dcp on 2 gloo processes started here (torch
multiprocessing, no Lightning launcher), then FSDP2 runs of the CLI saved on 2 ranks and resumed on 1 and 4.
"""

import os
import shutil
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, name: str, world: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    globals()[name](rank, Path(tmp))
    os._exit(0)  # gloo's threads may abort a finalizing interpreter; a failure raised before this


def _spawn(name: str, tmp: Path, world: int = 2) -> None:
    mp.spawn(_entry, args=(name, world, _free_port(), str(tmp)), nprocs=world)


def _sharded_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Two Linear blocks under FSDP2 (DTensor parameters, one shard per rank), one Adam step taken."""
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).double()
    for block in (model[0], model[2]):
        fully_shard(block)
    fully_shard(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    torch.manual_seed(1 + dist.get_rank())  # each rank its own batch, as in data-parallel training
    model(torch.randn(5, 6, dtype=torch.float64)).square().mean().backward()
    optimizer.step()
    return model, optimizer


def _state(model, optimizer, full: bool = False) -> dict:
    """What Lightning's ModelParallelStrategy hands to its save: weights and optimizer, sharded or full."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=full, cpu_offload=True)
    return {"state_dict": get_model_state_dict(model, options=options),
            "optimizer_0": get_optimizer_state_dict(model, optimizer, options=options)}


def _saves(rank: int, tmp: Path) -> None:
    from lightdist.distributed.dcp import save_sharded, wait_for_saves

    model, optimizer = _sharded_model()
    full = _state(model, optimizer, full=True)
    if rank == 0:
        torch.save(full, tmp / "full.pt")
    save_sharded(_state(model, optimizer), {"global_step": 1}, tmp / "sync.ckpt")
    assert (tmp / "sync.ckpt" / "meta.pt").is_file()  # in place on every rank when a sync save returns
    save_sharded(_state(model, optimizer), {"global_step": 1}, tmp / "over.ckpt")
    metadata = {"global_step": 1}
    save_sharded(_state(model, optimizer), metadata, tmp / "async.ckpt", async_save=True)
    metadata["global_step"] = 99
    with torch.no_grad():  # training goes on while the save is written: the checkpoint keeps the state as saved
        for parameter in model.parameters():
            parameter.add_(1.0)
    save_sharded(_state(model, optimizer), {"global_step": 2}, tmp / "over.ckpt", async_save=True)
    # the second save waited for the first: it is complete (and in place on every rank) by now
    assert (tmp / "async.ckpt" / "meta.pt").is_file() and not (tmp / "async.ckpt.partial").exists()
    wait_for_saves()
    assert (tmp / "over.ckpt" / "meta.pt").is_file() and not (tmp / "over.ckpt.partial").exists()


def _dcp_contents(path: Path, tmp: Path) -> dict:
    """Everything a DCP directory holds (weights and optimizer) as full tensors."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp / f"{path.name}.pt"
    dcp_to_torch_save(path, out)
    return torch.load(out, weights_only=True)


def _assert_same(actual, expected, where: str = "") -> None:
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            _assert_same(actual[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            _assert_same(a, e, f"{where}[{i}]")
    elif isinstance(expected, torch.Tensor):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=where)  # a copy: bit for bit
    else:
        assert actual == expected, where


def test_sync_and_async_saves_hold_the_gathered_state(tmp_path):
    """Sync and async saves hold the same weights and optimizer state, equal to the full state dict
    gathered from the shards; an async save keeps the state of its call although training changes the
    parameters right after; saving over a checkpoint replaces it; lightdist's checkpoint tools read it."""
    from lightdist.checkpoints import consolidate, latest_checkpoint, load_consolidated, verify

    _spawn("_saves", tmp_path)
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    sync, asynchronous = (_dcp_contents(tmp_path / name, tmp_path) for name in ("sync.ckpt", "async.ckpt"))
    _assert_same(asynchronous, sync)
    assert load_consolidated(tmp_path / "async.ckpt")["global_step"] == 1  # meta.pt as of the call
    _assert_same(sync["state_dict"], full["state_dict"])
    assert sync["optimizer_0"]["state"].keys() == full["optimizer_0"]["state"].keys()
    for name, state in full["optimizer_0"]["state"].items():
        _assert_same(sync["optimizer_0"]["state"][name], state, name)  # step, exp_avg, exp_avg_sq

    over = load_consolidated(tmp_path / "over.ckpt")
    assert over["global_step"] == 2  # the second save replaced the first
    for key, value in full["state_dict"].items():
        torch.testing.assert_close(over["state_dict"][key], value + 1.0, rtol=0, atol=1e-12, msg=key)

    assert verify(tmp_path / "sync.ckpt") == "fsdp"
    out = consolidate(tmp_path / "sync.ckpt", tmp_path / "one.ckpt")
    converted = torch.load(out, weights_only=True)
    assert converted["global_step"] == 1 and not any(k.startswith("optimizer") for k in converted)
    _assert_same(converted["state_dict"], full["state_dict"])  # plain tensors, the plain model's keys

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (tmp_path / "sync.ckpt").rename(run_dir / "checkpoints" / "last.ckpt")
    assert latest_checkpoint(run_dir) == run_dir / "checkpoints" / "last.ckpt"


def _killed_save(rank: int, tmp: Path) -> None:
    from torch.distributed.checkpoint.filesystem import FileSystemWriter

    from lightdist.distributed.dcp import save_sharded

    model, optimizer = _sharded_model()
    save_sharded(_state(model, optimizer), {"global_step": 1}, tmp / "last.ckpt")
    full = _state(model, optimizer, full=True)  # gathered by every rank
    if rank == 0:
        torch.save(full, tmp / "full.pt")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)

    def killed(*args, **kwargs):  # the coordinator dies once every shard is written, before .metadata
        os._exit(3)

    FileSystemWriter.finish = killed
    save_sharded(_state(model, optimizer), {"global_step": 2}, tmp / "last.ckpt")


def test_a_save_killed_midway_leaves_the_previous_checkpoint_whole(tmp_path):
    from lightdist.checkpoints import load_consolidated, verify

    with pytest.raises((mp.ProcessExitedException, mp.ProcessRaisedException)):  # rank 0 killed, rank 1 lost it
        _spawn("_killed_save", tmp_path)
    assert any((tmp_path / "last.ckpt.partial").glob("*.distcp"))  # the new shards were being written
    assert verify(tmp_path / "last.ckpt") == "fsdp"
    previous = load_consolidated(tmp_path / "last.ckpt")
    assert previous["global_step"] == 1
    _assert_same(previous["state_dict"], torch.load(tmp_path / "full.pt", weights_only=True)["state_dict"])


@pytest.mark.parametrize("exchange", [True, False])
def test_a_new_checkpoint_replaces_the_previous_whole(tmp_path, monkeypatch, exchange):
    """In one step where the filesystem can swap two names (Linux renameat2), else by two renames;
    a directory replaces a directory or a file (a full checkpoint saved under the same name before)."""
    from lightdist.distributed import dcp

    if not exchange:  # NFS and other filesystems without RENAME_EXCHANGE
        monkeypatch.setattr(dcp, "_exchange", lambda a, b: False)
    for previous in ("dir", "file"):
        path, new = tmp_path / f"{previous}.ckpt", tmp_path / f"{previous}.ckpt.partial"
        if previous == "dir":
            path.mkdir()
            (path / "old.distcp").write_text("old")
        else:
            path.write_text("old")
        new.mkdir()
        (new / "new.distcp").write_text("new")
        dcp._put_in_place(new, path)
        assert [p.name for p in path.iterdir()] == ["new.distcp"]
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(previous)) == [path.name]


# --- FSDP2 runs of the CLI: saved on 2 ranks, resumed on 1 and on 4 ---------------------------------
#
# Float64, GroupNorm (per sample), no dropout or augmentation, SGD with momentum; 256 training samples
# = 4 steps of a global batch of 64 per epoch, kept at every world size (32 x 2 = 64 x 1 = 16 x 4). The
# sampler deals one seeded permutation out round-robin, so the first k items of every rank make the same
# global batch at any world size: the resumed steps see the same samples as the straight run's, and the
# only difference is the order of the sums (means of 32 averaged over 2 ranks, of 64, of 16 over 4).
# Each rounding is ~1e-16 relative; 4 SGD steps amplify a last-bit difference by ~4x a step (measured
# in fp32 in test_strategies). Measured here: weights and momentum buffers of the resumed runs within
# 5e-16 (relative) of the straight run's, at 1 and at 4 ranks. So 1e-9 is far above rounding, and far
# below what a wrong batch, a lost momentum buffer or a misplaced shard would do (the weights move by
# their own size over these steps).
#
# The checkpoint is taken mid-epoch, after 2 of its 4 steps: the 2 ranks had taken the permutation's
# first 2 x 32 x 2 = 128 items, which 1 rank (128) or 4 ranks (32 each) continue from exactly
# (lightdist.data.samplers), so the resume is exact to the sample. Per-rank random generators cannot
# carry over to another world size (one warning; they start afresh): nothing here draws from them.

FSDP2 = ["strategy=fsdp2", "trainer.precision=64-true", "model.norm=group", "model.dropout=0.0",
         "model.channels=[8,16]", "model.hidden=64", "data.augment=null", "data.train_subset=256",
         "data.val_subset=64", "data.test_subset=64", "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
         "trainer.num_sanity_val_steps=0", "optimizer=sgd", "optimizer.lr=0.05", "scheduler=none", "logger=csv",
         "test_after_fit=false", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
WORLD = {1: ["trainer=cpu", "data.batch_size=64"], 2: ["trainer=cpu_ddp", "data.batch_size=32"],
         4: ["trainer=cpu_ddp", "trainer.devices=4", "threads_per_rank=1", "data.batch_size=16"]}
# 4 ranks of one thread each, started by torchrun: the preflight refuses more CPU processes than this
# machine has cores when lightdist starts them itself, and the test must not depend on the core count.
TORCHRUN_4 = ["--standalone", "--nproc-per-node=4", "-m", "lightdist"]
RNG_WARNING = "the random generators' state was saved by 2 ranks and is resumed on"


@pytest.fixture(scope="module")
def fsdp2_runs(tmp_path_factory) -> dict:
    """straight: 2 epochs on 2 ranks; saved: 2 steps on 2 ranks, saved asynchronously at every step;
    resumed on 1 and on 4 ranks to the end of the 2nd epoch from copies of the saved run (whose overrides a
    resume keeps: async saves at every step)."""
    from tests.helpers.cli import run_cli, run_dirs

    runs, outputs = {}, {}
    cwd = tmp_path_factory.mktemp("straight")
    run_cli([*WORLD[2], *FSDP2, "trainer.max_epochs=2"], cwd=cwd)
    (runs["straight"],) = run_dirs(cwd)
    cwd = tmp_path_factory.mktemp("saved")
    proc = run_cli([*WORLD[2], *FSDP2, "trainer.max_steps=2", "strategy.async_save=true",
                    "checkpoint.every_n_steps=1"], cwd=cwd)
    (runs["saved"],), outputs["saved"] = run_dirs(cwd), proc.stdout + proc.stderr
    for world in (1, 4):
        run_dir = tmp_path_factory.mktemp(f"resumed{world}") / "run"
        shutil.copytree(runs["saved"], run_dir)
        args = [*WORLD[world], *FSDP2, "trainer.max_epochs=2", "trainer.max_steps=-1", f"run_dir={run_dir}",
                "ckpt_path=last"]
        proc = run_cli([*TORCHRUN_4, *args], cwd=run_dir.parent, module="torch.distributed.run") if world == 4 \
            else run_cli(args, cwd=run_dir.parent)
        runs[world], outputs[world] = run_dir, proc.stdout + proc.stderr
    return {"runs": runs, "outputs": outputs}


def _full_checkpoint(path: Path, tmp: Path) -> dict:
    """A DCP checkpoint's weights and optimizer state as full tensors, with meta.pt's entries."""
    from lightdist.checkpoints import verify

    assert verify(path) == "fsdp"
    tmp.mkdir(exist_ok=True)
    contents = _dcp_contents(path, tmp)
    contents.update(torch.load(path / "meta.pt", weights_only=True))
    return contents


def _close(actual, expected, where: str = "") -> None:
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            _close(actual[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, torch.Tensor):
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12, msg=where)  # see above
    else:
        assert actual == expected, where


@pytest.mark.parametrize("world", [1, 4])
def test_fsdp2_resumes_at_another_world_size_as_if_never_stopped(fsdp2_runs, world, tmp_path):
    from tests.helpers.cli import read_summary

    runs = fsdp2_runs["runs"]
    assert fsdp2_runs["outputs"][world].count(RNG_WARNING) == 1  # rank 0 says it once
    assert "training loader's position" not in fsdp2_runs["outputs"][world]  # carried over exactly
    for run in ("saved", world):
        assert not list((runs[run] / "checkpoints").glob("*.partial"))  # every save completed and in place
        # lightdist.distributed.dcp wrote each save into a fresh directory, never DCP over an existing one
        assert "Detected an existing checkpoint" not in fsdp2_runs["outputs"][run]
    straight = _full_checkpoint(runs["straight"] / "checkpoints" / "last.ckpt", tmp_path / "s")
    resumed = _full_checkpoint(runs[world] / "checkpoints" / "last.ckpt", tmp_path / "r")
    assert resumed["global_step"] == straight["global_step"] == 8 and read_summary(runs[world])["global_step"] == 8
    _close(resumed["state_dict"], straight["state_dict"], "state_dict")
    # SGD's momentum buffers, resharded from 2 ranks and carried on: equal to the straight run's
    _close(resumed["optimizer_0"]["state"], straight["optimizer_0"]["state"], "optimizer_0")
    assert resumed["optimizer_0"]["state"] and resumed["optimizer_0"]["param_groups"][0]["lr"] == 0.05


def test_convert_makes_one_plain_file_that_eval_loads(fsdp2_runs, tmp_path):
    """`lightdist convert` of an FSDP2 checkpoint: the gathered weights as plain tensors under the plain
    model's keys (eval loads them strictly into the model the run's config builds, on one process)."""
    import json

    from tests.helpers.cli import run_cli

    run_dir = fsdp2_runs["runs"]["straight"]
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    run_cli(["convert", f"checkpoint={checkpoint}", f"output={tmp_path / 'model.ckpt'}"], cwd=tmp_path)
    converted = torch.load(tmp_path / "model.ckpt", weights_only=True)
    assert converted["global_step"] == 8 and not any(k.startswith("optimizer") for k in converted)
    _assert_same(converted["state_dict"], _full_checkpoint(checkpoint, tmp_path / "full")["state_dict"])
    assert all(type(t) is torch.Tensor and t.dtype == torch.float64 for t in converted["state_dict"].values())
    # the file on one plain process; the sharded directory itself as the run trained: fsdp2, 2 ranks, fp64
    for ckpt, how in ((tmp_path / "model.ckpt", ["trainer=cpu", "strategy=auto"]), (checkpoint, [])):
        run_cli(["eval", f"run_dir={run_dir}", f"ckpt={ckpt}", *how, "trainer.enable_progress_bar=false"],
                cwd=tmp_path)
    from_file, from_shards = (json.loads(p.read_text()) for p in sorted((run_dir / "eval").glob("*/report.json")))
    assert from_file["num_samples"] == 64 and from_file["confusion_matrix"] == from_shards["confusion_matrix"]


@pytest.mark.parametrize("world", [1, 3, 4])
def test_loader_position_carries_over_to_another_world_size(world, caplog):
    """2 ranks took 3 items each, the permutation's first 6: on 1 rank or 3 ranks (6 = 3 x 2) the epoch
    goes on with exactly the other samples; 4 ranks cannot split 6 evenly: the epoch again, one warning."""
    from lightdist.data.samplers import ResumableDistributedSampler

    taken = []
    for rank in range(2):
        sampler = ResumableDistributedSampler(range(24), 2, rank, seed=7)
        sampler.set_epoch(1)
        items = iter(sampler)
        taken += [next(items) for _ in range(3)]
    state = sampler.state_dict()  # the last rank's: every rank took as many
    rest = []
    for rank in range(world):
        sampler = ResumableDistributedSampler(range(24), world, rank, seed=7)
        sampler.load_state_dict(state)
        sampler.set_epoch(1)
        rest += list(sampler)
    warnings = caplog.text.count("training loader's position was saved by 2 ranks and is resumed on 4")
    if world == 4:
        assert warnings == 1 and sorted(rest) == list(range(24))  # rank 0 warns; every sample once
    else:
        assert warnings == 0 and sorted(taken + rest) == list(range(24))  # the rest of the epoch, no repeat


def test_fsdp2_async_run_preempted_mid_epoch_resumes_as_if_never_stopped(fsdp2_runs, tmp_path):
    """A preemption signal at step 3 on 2 ranks with async saves: preempted.ckpt is complete when the
    job stops (the preemption save waits for its async write), and the resumed run ends where the
    straight one does (same world size: same sums; the tolerance of the resumes above)."""
    from tests.helpers.interrupt import interrupt_env, run_interrupted

    args = [*WORLD[2], *FSDP2, "trainer.max_epochs=2", "strategy.async_save=true"]
    run_dir, (output,) = run_interrupted(args, tmp_path, [3], env=interrupt_env())
    assert any(line.startswith("Restoring states") and line.endswith("checkpoints/preempted.ckpt")
               for line in output.splitlines()), output[-3000:]
    straight = _full_checkpoint(fsdp2_runs["runs"]["straight"] / "checkpoints" / "last.ckpt", tmp_path / "s")
    resumed = _full_checkpoint(run_dir / "checkpoints" / "last.ckpt", tmp_path / "r")
    assert resumed["global_step"] == 8
    _close(resumed["state_dict"], straight["state_dict"], "state_dict")
    _close(resumed["optimizer_0"]["state"], straight["optimizer_0"]["state"], "optimizer_0")
