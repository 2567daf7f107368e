"""Checkpoints are data, never code: crafted files whose unpickling would run a command (here:
create a marker file) are refused with one line, by every command that reads checkpoints or
weights, before anything unpickles them; real checkpoints still load."""

import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lightdist.checkpoints import UnsafeCheckpoint, load_consolidated, verify
from lightdist.runs import read_weights
from tests.helpers.cli import QUIET, cli_env, run_cli, run_dirs

TINY = ["data.train_subset=128", "data.val_subset=64", "data.test_subset=64", "trainer.max_epochs=1",
        "model.channels=[4,8]", "model.hidden=16", *QUIET]


class Payload:
    """Unpickling it calls os.system, which creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def assert_refused(proc, marker: Path) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines[-1].startswith("lightdist: error: ") and "needs unpickling of posix.system which is not allowed" \
        in lines[-1], proc.stderr[-3000:]
    assert not marker.exists()


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "a crafted checkpoint ran code"


# -- in process: every kind of checkpoint ---------------------------------------------------------------
def test_crafted_files_are_refused(tmp_path, marker):
    lightning = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(2)}, "epoch": 0, "extra": Payload(marker)}, lightning)
    weights = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2), "extra": Payload(marker)}, weights)
    for path in (lightning, weights):
        for load in (verify, load_consolidated, read_weights):
            with pytest.raises(UnsafeCheckpoint, match=rf"^{re.escape(str(path))} needs unpickling of posix.system"):
                load(path)
    # a plain pickle (not torch.save's zip) is no checkpoint at all
    (tmp_path / "plain.pt").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(Exception, match="not a readable PyTorch checkpoint"):
        read_weights(tmp_path / "plain.pt")


def test_sharded_checkpoints_are_checked_before_torch_distributed_checkpoint_reads_them(tmp_path, marker):
    """FSDP's sharded format: `.metadata` is a plain pickle, non-tensor items are torch.save blobs that
    torch.distributed.checkpoint loads with weights_only=False, meta.pt is Lightning's."""
    import torch.distributed.checkpoint as dcp

    state = {"model": {"w": torch.arange(4.0)}, "optimizer_0": {"param_groups": [{"lr": 0.1, "betas": (0.9, 0.99)}]}}
    dcp.save(state, checkpoint_id=tmp_path / "ok")
    torch.save({"epoch": 3, "global_step": 12}, tmp_path / "ok" / "meta.pt")
    assert verify(tmp_path / "ok") == "fsdp"
    loaded = load_consolidated(tmp_path / "ok")
    assert loaded["global_step"] == 12 and torch.equal(loaded["state_dict"]["w"], torch.arange(4.0))

    state["optimizer_0"]["param_groups"][0]["lr"] = Payload(marker)  # a crafted non-tensor item
    dcp.save(state, checkpoint_id=tmp_path / "item")
    shutil.copytree(tmp_path / "ok", tmp_path / "metadata")
    (tmp_path / "metadata" / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    shutil.copytree(tmp_path / "ok", tmp_path / "meta")
    torch.save({"epoch": Payload(marker)}, tmp_path / "meta" / "meta.pt")
    for name, where in (("item", "__0_0.distcp (item optimizer_0.param_groups.0.lr)"),
                        ("metadata", ".metadata"), ("meta", "meta.pt")):
        for load in (verify, load_consolidated):
            with pytest.raises(UnsafeCheckpoint, match=rf"^{re.escape(str(tmp_path / name / where))} needs unpickling"):
                load(tmp_path / name)


def test_deepspeed_directories_are_checked_file_by_file(tmp_path, marker):
    folder = tmp_path / "last.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "latest").write_text("checkpoint")
    torch.save({"module": {"w": torch.zeros(2)}}, folder / "checkpoint" / "mp_rank_00_model_states.pt")
    assert verify(folder) == "deepspeed"
    torch.save({"optimizer_state_dict": {"x": Payload(marker)}}, folder / "checkpoint" / "zero_pp_rank_0_optim_states.pt")
    with pytest.raises(UnsafeCheckpoint, match="zero_pp_rank_0_optim_states.pt needs unpickling of posix.system"):
        verify(folder)


def test_exported_programs_load_weights_only(tmp_path, marker):
    """torch.export.load unpickles some payloads with weights_only=False; the runner's loader does not."""
    from lightdist.optimize.export import load_exported

    model = nn.Linear(3, 2).eval()
    torch.export.save(torch.export.export(model, (torch.randn(2, 3),)), str(tmp_path / "model.pt2"))
    x = torch.randn(2, 3)  # the exported batch size (no dynamic shapes here)
    torch.testing.assert_close(load_exported(tmp_path / "model.pt2")(x), model(x))
    with zipfile.ZipFile(tmp_path / "model.pt2") as source, zipfile.ZipFile(tmp_path / "crafted.pt2", "w") as out:
        for item in source.infolist():  # sample inputs replaced by a crafted torch.save blob
            data = source.read(item.filename)
            out.writestr(item, crafted_bytes(Payload(marker)) if item.filename.endswith("sample_inputs/model.pt")
                         else data)
    with pytest.raises(UnsafeCheckpoint, match="crafted.pt2 needs unpickling of posix.system"):
        load_exported(tmp_path / "crafted.pt2")


def test_the_runner_loads_a_pickled_module_only_when_trusted(tmp_path, marker):
    from lightdist.optimize.export import PICKLED_DYNAMIC_FILE, write_sidecar

    model = nn.Linear(3, 2).eval()
    x = torch.randn(5, 3)
    with torch.no_grad():
        write_sidecar(tmp_path, (x,), model(x), {"num_classes": 2}, None)
    torch.save(model, tmp_path / PICKLED_DYNAMIC_FILE)
    runner = ["-m", "lightdist.optimize.run_exported", str(tmp_path / PICKLED_DYNAMIC_FILE)]
    proc = subprocess.run([sys.executable, *runner], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        f"lightdist: error: {tmp_path / PICKLED_DYNAMIC_FILE} is a pickled module"), proc.stderr
    proc = subprocess.run([sys.executable, *runner, "--trust-pickle"], capture_output=True, text=True, env=cli_env(),
                          timeout=120)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 5, proc.stderr
    torch.save(Payload(marker), tmp_path / PICKLED_DYNAMIC_FILE)  # refused without the flag: nothing runs
    proc = subprocess.run([sys.executable, *runner], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 2 and not marker.exists()


# -- end to end: every command ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("safety")
    run_cli(["+experiment=fashion_mnist_cnn", *TINY], cwd=workdir)
    (run_dir,) = run_dirs(workdir, "fashion_mnist_cnn")
    return run_dir


@pytest.fixture
def crafted_run(tiny_run, tmp_path, marker) -> Path:
    """A copy of a real run whose checkpoints were replaced by crafted ones."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        real = torch.load(ckpt, weights_only=True)
        torch.save({**real, "extra": Payload(marker)}, ckpt)
    summary = json.loads((run_dir / "summary.json").read_text())
    best = Path(summary["best_checkpoint"])
    summary["best_checkpoint"] = str(run_dir / "checkpoints" / best.name)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def test_real_checkpoints_still_load(tiny_run, tmp_path):
    out = tmp_path / "model.ckpt"
    proc = run_cli(["convert", str(tiny_run / "checkpoints" / "last.ckpt"), "-o", str(out)], cwd=tmp_path)
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    converted = torch.load(out, weights_only=True)  # the converted file is data only too
    original = torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.equal(converted["state_dict"][k], v) for k, v in original["state_dict"].items())
    assert read_weights(tiny_run).keys() == read_weights(out).keys()


def test_every_command_refuses_a_crafted_checkpoint(crafted_run, tmp_path, marker, capsys, monkeypatch):
    """convert in a subprocess (the real CLI); the others in process: each is refused before it builds anything."""
    from lightdist.main import main

    ckpt = crafted_run / "checkpoints" / "last.ckpt"
    assert_refused(run_cli(["convert", str(ckpt)], cwd=tmp_path, check=False), marker)
    state_dict_file = tmp_path / "weights.pt"
    torch.save({"body.0.weight": torch.zeros(1), "extra": Payload(marker)}, state_dict_file)
    np.save(tmp_path / "x.npy", np.zeros((28, 28), dtype=np.uint8))
    monkeypatch.chdir(tmp_path)
    train = ["+experiment=fashion_mnist_cnn", *TINY]
    for args in ([*train, f"transfer.init_from={state_dict_file}"],
                 [*train, f"transfer.init_from={crafted_run}"],
                 [*train, f"distill.teacher={crafted_run}"],
                 [*train, f"ckpt_path={ckpt}"],
                 ["eval", f"run_dir={crafted_run}"],
                 ["predict", f"run_dir={crafted_run}", f"image={tmp_path / 'x.npy'}"],
                 ["optimize", f"run_dir={crafted_run}", "steps=[prune]"]):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and lines, args
        assert lines[-1].startswith("lightdist: error: ") and "needs unpickling of posix.system which is not " \
            "allowed" in lines[-1], (args, lines)
        assert not marker.exists()
    assert not (tmp_path / "outputs").exists()  # refused before any run directory was created
