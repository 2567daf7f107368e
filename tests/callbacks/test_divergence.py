"""A run whose loss or gradients stop being finite stops: the guard on a tiny model in-process,
then the real CLI on Fashion-MNIST (one process and two gloo ranks) in a subprocess."""

import json
import re

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from lightdist.callbacks.divergence import Diverged, DivergenceGuard
from tests.helpers.cli import QUIET, read_summary, run_cli, run_dirs

BATCHES = 4  # training steps per epoch of the tiny model


class Breaking(BoringModel):
    """Breaks at the given steps (0-based, counted before the step): `loss` makes only the loss
    value NaN (gradients stay finite), `grad` only the gradients, `weights` both (then the weights)."""

    def __init__(self, bad_steps, how: str = "weights"):
        super().__init__()
        self.bad_steps, self.how = set(bad_steps), how
        self.register_buffer("running_stat", torch.zeros(3))

    def training_step(self, batch, batch_idx):
        loss = self.step(batch)
        if self.global_step in self.bad_steps:
            if self.how == "loss":
                loss = loss + torch.tensor(float("nan"))
            elif self.how == "grad":
                loss = loss + torch.sqrt(self.layer.weight.sum() * 0)  # value 0, gradient 0 * inf
            elif self.how == "buffer":  # like BatchNorm's running variance overflowing
                self.running_stat[1] = float("inf")
            else:
                loss = loss * float("nan")
        return {"loss": loss}


def fit(model, tmp_path, guard, epochs: int = 3):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None, every_n_epochs=1,
                                 enable_version_counter=False)
    trainer = L.Trainer(max_epochs=epochs, limit_train_batches=BATCHES, limit_val_batches=2, num_sanity_val_steps=0,
                        callbacks=[guard, checkpoint], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model)
    return trainer


def all_finite(ckpt_file) -> bool:
    state = torch.load(ckpt_file, map_location="cpu", weights_only=False)["state_dict"]
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_stops_at_the_first_non_finite_loss_and_keeps_the_last_finite_checkpoint(tmp_path):
    with pytest.raises(Diverged) as caught:
        fit(Breaking(bad_steps=range(BATCHES + 1, 100)), tmp_path, DivergenceGuard())
    assert (caught.value.step, caught.value.metric) == (BATCHES + 2, "loss")
    message = str(caught.value)
    assert f"step {BATCHES + 2}" in message and "optimizer.lr" in message and "trainer.gradient_clip_val" in message
    ckpt = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == BATCHES  # the end of the first epoch, not overwritten since
    assert all_finite(tmp_path / "last.ckpt")


def test_no_checkpoint_is_saved_on_the_way_out(tmp_path):
    on_exception = ModelCheckpoint(dirpath=tmp_path / "exc", save_on_exception=True, monitor=None)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=BATCHES, limit_val_batches=0, logger=False,
                        callbacks=[DivergenceGuard(), on_exception], enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    with pytest.raises(Diverged):
        trainer.fit(Breaking(bad_steps=[1]))
    assert not (tmp_path / "exc").exists() or not list((tmp_path / "exc").iterdir())


def test_a_normal_run_is_not_stopped(tmp_path):
    trainer = fit(Breaking(bad_steps=[]), tmp_path, DivergenceGuard(), epochs=2)
    assert trainer.global_step == 2 * BATCHES and all_finite(tmp_path / "last.ckpt")


def test_patience_counts_consecutive_non_finite_steps(tmp_path):
    # one NaN loss value (gradients finite, so the weights stay finite) is tolerated with patience 2
    trainer = fit(Breaking(bad_steps=[1], how="loss"), tmp_path, DivergenceGuard(patience=2), epochs=1)
    assert trainer.global_step == BATCHES
    with pytest.raises(Diverged) as caught:
        fit(Breaking(bad_steps=[1], how="loss"), tmp_path / "p1", DivergenceGuard(patience=1), epochs=1)
    assert caught.value.step == 2
    # two in a row are not; the step named is the first of them
    guard = DivergenceGuard(patience=2)
    with pytest.raises(Diverged) as caught:
        fit(Breaking(bad_steps=[1, 2], how="loss"), tmp_path / "p2", guard, epochs=1)
    assert caught.value.step == 2 and guard.streak == 2


def test_a_streak_still_open_when_a_checkpoint_is_due_stops_the_run_there(tmp_path):
    # the last step of epoch 1 breaks the weights; patience 5 would wait, the checkpoint may not
    with pytest.raises(Diverged) as caught:
        fit(Breaking(bad_steps=[BATCHES - 1]), tmp_path, DivergenceGuard(patience=5))
    assert caught.value.step == BATCHES
    assert not (tmp_path / "last.ckpt").exists()


def test_non_finite_buffers_with_a_finite_loss_stop_before_the_checkpoint(tmp_path):
    with pytest.raises(Diverged) as caught:
        fit(Breaking(bad_steps=[BATCHES + 1], how="buffer"), tmp_path, DivergenceGuard())
    assert (caught.value.step, caught.value.metric, caught.value.value) == (2 * BATCHES, "running_stat", float("inf"))
    assert torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == BATCHES
    assert all_finite(tmp_path / "last.ckpt")


def test_gradient_norm_is_checked_before_the_loss_shows_it(tmp_path):
    with pytest.raises(Diverged) as caught:
        fit(Breaking(bad_steps=[1], how="grad"), tmp_path, DivergenceGuard(check_grad_norm=True))
    assert (caught.value.step, caught.value.metric) == (2, "grad_norm")
    # without the gradient check the NaN weights show up in the next step's loss
    with pytest.raises(Diverged) as caught:
        fit(Breaking(bad_steps=[1], how="grad"), tmp_path / "off", DivergenceGuard(check_grad_norm=False))
    assert (caught.value.step, caught.value.metric) == (3, "loss")


def test_the_verdict_of_another_rank_stops_this_one(tmp_path, monkeypatch):
    """The ranks agree through the strategy: a finite rank stops when any rank says so."""
    guard = DivergenceGuard()
    reduced = []

    def any_rank(tensor, group=None, reduce_op="mean"):
        if reduce_op != "max":  # Lightning's own (the loader lengths)
            return tensor
        reduced.append(tensor.tolist())
        return torch.ones_like(tensor)  # as if another rank had seen a NaN at every step

    trainer = L.Trainer(max_epochs=1, limit_train_batches=BATCHES, limit_val_batches=0, callbacks=[guard],
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, accelerator="cpu", devices=1)
    monkeypatch.setattr(trainer.strategy, "reduce", any_rank)
    with pytest.raises(Diverged) as caught:
        trainer.fit(Breaking(bad_steps=[]))
    assert caught.value.step == 1 and "another rank" in caught.value.metric
    # read once, at the epoch's end: this rank's own verdict for each step, combined with max
    assert reduced == [[0.0] * BATCHES]


def test_values_are_read_every_n_steps_and_name_the_first_bad_step(tmp_path):
    reads = []
    guard = DivergenceGuard(check_every_n_steps=3)
    read = guard._read
    guard._read = lambda trainer: (reads.append(trainer.global_step), read(trainer))
    trainer = L.Trainer(max_epochs=2, limit_train_batches=BATCHES, limit_val_batches=0, callbacks=[guard],
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, accelerator="cpu", devices=1)
    with pytest.raises(Diverged) as caught:
        trainer.fit(Breaking(bad_steps=[4], how="loss"))  # the 5th step's loss only
    assert caught.value.step == 5 and trainer.global_step == 6  # noticed at the read of step 6
    assert reads == [3, 4, 6]  # every 3 steps, and at the end of epoch 1 (a checkpoint may follow)


def test_a_save_between_reads_reads_first(tmp_path):
    """A checkpoint saved between two reads (every N steps, preemption) is never written from
    pending non-finite steps: the guard reads while it is built."""
    every_2 = ModelCheckpoint(dirpath=tmp_path, filename="{step}", monitor=None, save_top_k=-1,
                              every_n_train_steps=2, enable_version_counter=False)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=BATCHES, limit_val_batches=0, logger=False,
                        callbacks=[DivergenceGuard(check_every_n_steps=100), every_2], enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    with pytest.raises(Diverged) as caught:
        trainer.fit(Breaking(bad_steps=[2]))  # the 3rd step breaks the weights
    assert caught.value.step == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step=2.ckpt"]
    assert all_finite(tmp_path / "step=2.ckpt")


def test_patience_must_be_positive():
    with pytest.raises(ValueError):
        DivergenceGuard(patience=0)


# -- end to end: the real CLI ---------------------------------------------------------------------
# Epoch 1 trains normally (lr 0.01), then the step schedule multiplies the lr by 1e7: the loss
# overflows to NaN a few steps into epoch 2, after epoch 1's checkpoints were written.
BLOW_UP = ["optimizer=sgd", "optimizer.lr=0.01", "scheduler=step", "scheduler.step_epochs=1", "scheduler.gamma=1e7",
           "data.train_subset=512", "data.val_subset=128", "data.test_subset=128", "data.batch_size=64",
           "trainer.max_epochs=4", *QUIET]


def check_diverged_run(proc, workdir, steps_per_epoch: int) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "diverged" in line]
    assert len(lines) == 1, proc.stderr[-3000:]  # one line, from rank 0 only
    # the loss, the gradient norm, or a weight or buffer (SimpleCNN's BatchNorm running variance)
    assert re.match(r"lightdist: error: training diverged at step \d+: \S+ is -?(nan|inf) \(", lines[0]), lines[0]
    assert "optimizer.lr" in lines[0] and "trainer.gradient_clip_val" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not [line for line in proc.stdout.splitlines() if line.startswith("step ")]  # progress bar off
    (run_dir,) = run_dirs(workdir)
    summary = read_summary(run_dir)
    assert summary["diverged"]["step"] > steps_per_epoch
    assert f"step {summary['diverged']['step']}: {summary['diverged']['metric']} is" in lines[0]
    assert summary["test"] == {}  # nothing was tested with a broken model
    segments = json.loads((run_dir / "run.json").read_text())["segments"]
    assert segments[-1]["status"] == "diverged"
    best = summary["best_checkpoint"]
    checkpoints = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert checkpoints == {"last.ckpt", best.rsplit("/", 1)[-1]}, checkpoints
    for name in checkpoints:
        ckpt = torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=False)
        assert ckpt["global_step"] < summary["diverged"]["step"]
        assert all_finite(run_dir / "checkpoints" / name), name


@pytest.mark.slow
def test_cli_run_that_diverges_stops_with_one_line(workdir):
    proc = run_cli(BLOW_UP, cwd=workdir, check=False)
    check_diverged_run(proc, workdir, steps_per_epoch=512 // 64)


@pytest.mark.slow
def test_cli_ddp_run_that_diverges_stops_every_rank(workdir):
    proc = run_cli(["trainer=cpu_ddp", *BLOW_UP], cwd=workdir, check=False, timeout=240)
    check_diverged_run(proc, workdir, steps_per_epoch=512 // 64 // 2)
