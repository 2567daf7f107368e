"""What a user sees: progress lines when stdout is not a terminal, the live bar when it is, the
summary at the end of a run (and that its commands run), no advertising from Lightning."""

import json
import logging
import re
import shlex
import sys

import lightning as L
import numpy as np
import pytest
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel

from lightdist import run_dir as rd
from lightdist.callbacks.progress import LogProgress, RichProgress
from lightdist.config import resolvers
from lightdist.config.compose import compose
from lightdist.train import build_callbacks
from tests.helpers.cli import read_summary, run_cli, run_dirs

resolvers.register()
PROGRESS = re.compile(r"^step (\d+)/(\d+)  epoch (\d+)/(\d+)  train/loss \S+.*  (\d+) samples/s  ETA \d+:\d\d:\d\d$")


def test_progress_lines_every_n_steps(capsys):
    trainer = L.Trainer(max_epochs=2, limit_train_batches=5, limit_val_batches=2, num_sanity_val_steps=0,
                        callbacks=[LogProgress(every_n_steps=3, every_n_seconds=None)], logger=False,
                        enable_checkpointing=False, enable_model_summary=False, accelerator="cpu", devices=1)

    class Logged(BoringModel):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            self.log("train/loss", out["loss"], prog_bar=True)
            return out

    trainer.fit(Logged())
    lines = capsys.readouterr().out.splitlines()
    steps = [int(m.group(1)) for m in map(PROGRESS.match, lines) if m]
    assert steps == [3, 6, 9], lines
    totals = {(m.group(2), m.group(4)) for m in map(PROGRESS.match, lines) if m}
    assert totals == {("10", "2")}
    assert sum(line.startswith("validation  epoch ") for line in lines) == 2


def test_progress_lines_every_n_seconds_and_disabled(capsys):
    bar = LogProgress(every_n_steps=None, every_n_seconds=1e-9)  # every step
    trainer = L.Trainer(max_steps=4, limit_val_batches=0, callbacks=[bar], logger=False, enable_checkpointing=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(BoringModel())
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()] == ["1/4", "2/4", "3/4", "4/4"]
    bar.disable()  # what Lightning does on ranks > 0
    trainer = L.Trainer(max_steps=4, limit_val_batches=0, callbacks=[bar], logger=False, enable_checkpointing=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(BoringModel())
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError):
        LogProgress(every_n_steps=None, every_n_seconds=None)


@pytest.mark.parametrize(("tty", "progress_bar", "expected"), [
    (False, True, [LogProgress]), (True, True, [RichProgress]), (False, False, []), (True, False, [])])
def test_the_bar_fits_the_output(monkeypatch, tmp_path, tty, progress_bar, expected):
    cfg = compose([f"trainer.enable_progress_bar={str(progress_bar).lower()}"])
    cfg.paths.output_dir = str(tmp_path)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    bars = [type(c) for c in build_callbacks(cfg, has_logger=True) if isinstance(c, ProgressBar)]
    assert bars == expected


def test_lightning_advertising_is_not_printed():
    import lightdist.train  # noqa: F401  (installs the filter)

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    log.addHandler(handler)
    try:
        L.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", devices=1)
    finally:
        log.removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert any("GPU available" in m for m in messages), messages  # the handler hears Lightning's info
    assert not any("litlogger" in m or "Tip:" in m for m in messages), messages


def test_summary_text_without_test_or_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = rd.describe({"run_dir": str(tmp_path / "outputs" / "r 1"), "test": {}, "best_checkpoint": None,
                        "epochs": 1, "global_step": 5, "wall_time_s": 2.5, "interrupted": True}, [])
    assert text.splitlines() == ["Run was interrupted after 1 epoch(s), 5 step(s), 2.5 s.",
                                 "  run directory  'outputs/r 1'"]


@pytest.mark.slow
def test_cli_run_prints_progress_lines_and_a_summary_that_works(workdir):
    """stdout is a pipe here, as in a SLURM log: lines, not a live bar; at the end, the summary."""
    proc = run_cli(["data.train_subset=512", "data.val_subset=128", "data.test_subset=256", "data.batch_size=64",
                    "trainer.max_epochs=2", "callbacks.progress_log.every_n_steps=4",
                    "trainer.enable_model_summary=false"], cwd=workdir)
    out = proc.stdout.splitlines()
    progress = [PROGRESS.match(line) for line in out if line.startswith("step ")]
    assert progress and all(progress), out
    assert [int(m.group(1)) for m in progress] == [4, 8, 12, 16]
    assert {(m.group(2), m.group(3), m.group(4)) for m in progress} == {("16", "1", "2"), ("16", "2", "2")}
    assert sum(line.startswith("validation  epoch ") for line in out) == 2
    assert "━" not in proc.stdout  # no Rich bar
    assert "litlogger" not in proc.stdout + proc.stderr and "Tip:" not in proc.stdout + proc.stderr

    (run_dir,) = run_dirs(workdir)
    summary = read_summary(run_dir)
    assert summary["diverged"] is None and summary["global_step"] == 16
    assert json.loads((run_dir / "run.json").read_text())["segments"][-1]["status"] == "completed"
    end = out[out.index(next(line for line in out if line.startswith("Run finished"))):]
    assert end[0] == f"Run finished after 2 epoch(s), 16 step(s), {summary['wall_time_s']} s."
    fields = {line[2:].split("  ", 1)[0]: line.split("  ", 2)[-1].strip() for line in end[1:] if line.strip()}
    assert f"test/acc {summary['test']['test/acc']:.4g}" in fields["test (best checkpoint)"]
    rel = run_dir.relative_to(workdir)
    assert fields["run directory"] == str(rel)
    best = fields["best checkpoint"].split("  ")[0]
    assert (workdir / best).resolve() == (workdir / summary["best_checkpoint"]).resolve()
    commands = [line.strip().removeprefix("next").strip() for line in end if "lightdist " in line]
    assert commands == [f"lightdist eval run_dir={rel}", f"lightdist predict run_dir={rel} image=<file>"]

    # the commands it suggests run as printed
    run_cli(shlex.split(commands[0])[1:], cwd=workdir)
    np.save(workdir / "shoe.npy", np.zeros((28, 28), dtype=np.uint8))
    predicted = run_cli(shlex.split(commands[1].replace("<file>", "shoe.npy"))[1:], cwd=workdir)
    prediction = json.loads(predicted.stdout.strip().splitlines()[-1])
    assert prediction["input"] == "shoe.npy" and prediction["label"] in prediction["probs"]
    assert abs(sum(prediction["probs"].values()) - 1) < 1e-3
