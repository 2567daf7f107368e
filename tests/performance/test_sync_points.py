"""No host-device synchronisation in the training step by default: what would make the host wait
for a GPU is counted on the CPU (tests/helpers/sync_points.py explains what counts), per batch,
and only the steps whose metrics Lightning logs (trainer.log_every_n_steps) and epoch ends
(validation, checkpoints) may have any. bench/sync_check.py checks the same on a GPU with
torch.cuda.set_sync_debug_mode."""

import json
from collections import Counter
from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, TensorDataset

from lightdist.callbacks.progress import LogProgress, RichProgress
from lightdist.callbacks.throughput import ThroughputMonitor
from lightdist.tasks.classification import ClassificationTask
from lightdist.vision.models.cnn import SimpleCNN
from tests.helpers.cli import run_cli
from tests.helpers.interrupt import interrupt_env
from tests.helpers.sync_points import SyncProbe

LOG_EVERY = 4
# What a logging step of the default run reads: the logged step values (Lightning), the learning
# rates (LearningRateMonitor), the divergence guard's pending values; a few more would be fine,
# one per step of the interval would not.
LOGGING_STEP_BOUND = 8


def waits_by_batch(batches: list[dict], steady: bool) -> dict[int, list[tuple[str, str]]]:
    return {b["batch"]: [(w["what"], w["site"]) for w in b["waits"]] for b in batches
            if (not b["logging"] and not b["epoch_end"]) == steady}


def check_steps(batches: list[dict], expected_batches: int) -> list[int]:
    """No wait in a steady step; a few in each logging step (returned: their counts)."""
    assert len(batches) == expected_batches
    assert {b: w for b, w in waits_by_batch(batches, steady=True).items() if w} == {}
    logging = [len(b["waits"]) for b in batches if b["logging"] and not b["epoch_end"]]
    assert logging and all(0 < n <= LOGGING_STEP_BOUND for n in logging), waits_by_batch(batches, steady=False)
    return logging


@pytest.mark.slow
def test_the_default_image_run_waits_only_at_logging_steps_and_epoch_ends(workdir):
    """The real CLI, default callbacks and CSV logger, progress lines (stdout is not a terminal)."""
    path = workdir / "probe.json"
    run_cli(["data.train_subset=320", "data.val_subset=64", "data.batch_size=32", "trainer.max_epochs=2",
             f"trainer.log_every_n_steps={LOG_EVERY}", "test_after_fit=false",
             "+callbacks.sync_probe._target_=tests.helpers.sync_points.SyncProbe",
             f"+callbacks.sync_probe.path={path}"], cwd=workdir, env=interrupt_env())
    probe = json.loads(path.read_text())
    check_steps(probe["batches"], expected_batches=20)
    # the counter sees what it should: the logging steps read the logged values on the host
    reads = Counter(w["site"].split(":")[0] for b in probe["batches"] if b["logging"] for w in b["waits"])
    assert reads["lightning/fabric/utilities/apply_func.py"] > 0, reads
    # host-only calls (data loading, optimizers' step counters) are kept apart, not ignored
    assert sum(b["host"].get("optimizer step counter", 0) for b in probe["batches"]) > 0


def tiny_fit(tmp_path, *callbacks: L.Callback, batches: int = 12, logger=False) -> tuple[SyncProbe, ClassificationTask]:
    probe = SyncProbe(str(tmp_path / "probe.json"))
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(batches * 8, 1, 8, 8, generator=generator),
                         torch.randint(0, 4, (batches * 8,), generator=generator))
    task = ClassificationTask(SimpleCNN(1, 4, 8), 4, partial(torch.optim.AdamW, lr=1e-3))
    trainer = L.Trainer(max_epochs=1, log_every_n_steps=LOG_EVERY, callbacks=[probe, *callbacks], logger=logger,
                        limit_val_batches=0, enable_checkpointing=False, enable_model_summary=False,
                        accelerator="cpu", devices=1)
    trainer.fit(task, DataLoader(data, batch_size=8))
    return probe, task


@pytest.mark.parametrize("bar", ["rich", "lines every step"])
def test_progress_displays_read_metrics_at_logging_steps_only(tmp_path, bar, capsys):
    display = RichProgress() if bar == "rich" else LogProgress(every_n_steps=None, every_n_seconds=1e-9)
    probe, _ = tiny_fit(tmp_path, display)
    check_steps(probe.batches, expected_batches=12)
    if bar != "rich":  # a line after every step; the loss in it as read at the last logging step
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
        assert len(lines) == 12 and all("train/loss" in line for line in lines[LOG_EVERY - 1:]), lines


class Recorder(Logger):
    name, version = "recorder", 0

    def __init__(self):
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, *args, **kwargs):
        pass


@pytest.mark.parametrize("flops", [False, True])
def test_throughput_is_measured_at_logging_steps(tmp_path, flops):
    recorder = Recorder()
    monitor = ThroughputMonitor(window_size=LOG_EVERY, flops=flops)
    probe, task = tiny_fit(tmp_path, monitor, logger=recorder)
    check_steps(probe.batches, expected_batches=12)
    rates = [(step, m) for step, m in recorder.rows if "train/device/samples_per_sec" in m]
    assert [step for step, _ in rates] == [4, 8, 12]
    assert all(m["train/samples"] == 8 * step and m["train/device/samples_per_sec"] > 0 for step, m in rates)
    assert ("train/device/flops_per_sec" in rates[0][1]) == flops
    # the first batch's FLOPs are counted (a forward under a counting mode, ~0.3 s) only when asked for
    assert (task.flops_per_batch is not None) == flops


class CountingLogs(L.Callback):
    """The steps (1-based) whose training_step called self.log, and what Lightning's loggers wrote."""

    def __init__(self):
        self.logged_at: list[int] = []

    def on_train_start(self, trainer, pl_module):
        original = pl_module.log

        def log(name, *args, **kwargs):
            if pl_module.trainer.training and name.startswith("train/"):
                self.logged_at.append(pl_module.global_step + 1)
            return original(name, *args, **kwargs)

        pl_module.log = log


def test_training_step_logs_only_what_lightning_writes(tmp_path):
    # 10 batches, a row every 4 steps: self.log at steps 4 and 8 (loss and accuracy) and at the
    # epoch's last batch (callbacks reading callback_metrics at the epoch end see its loss)
    counting, recorder = CountingLogs(), Recorder()
    _, task = tiny_fit(tmp_path, counting, batches=10, logger=recorder)
    assert counting.logged_at == [4, 4, 8, 8, 10, 10]
    rows = [(step, sorted(k for k in m if k in ("train/loss", "train/acc"))) for step, m in recorder.rows]
    assert [r for r in rows if r[1]] == [(3, ["train/acc", "train/loss"]), (7, ["train/acc", "train/loss"])]
    assert torch.isfinite(task.trainer.callback_metrics["train/loss"])
