"""EMA and SWA of the weights (callbacks=[default,ema] / [default,swa]): validation, the checkpoint
and the test after fit see the averaged weights, not the ones being trained; checkpoints stay
weights-only data and reload for eval."""

import json
from functools import partial

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightdist.callbacks.weight_averaging import EMA, SWA
from lightdist.checkpoints import verify
from lightdist.errors import ConfigError
from lightdist.tasks.classification import ClassificationTask
from tests.helpers.cli import QUIET, read_summary, run_cli, run_dirs


def _data(n: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _task() -> ClassificationTask:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    return ClassificationTask(model, 3, optimizer=partial(torch.optim.SGD, lr=0.5))


def _fit(tmp_path, callback, epochs=2):
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=-1)
    trainer = L.Trainer(max_epochs=epochs, callbacks=[callback, checkpoints], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1,
                        default_root_dir=tmp_path)  # the test loop writes its confusion matrix there
    task = _task()
    trainer.fit(task, _data(64, 0), _data(32, 1))
    return trainer, task, tmp_path / "last.ckpt"


def _loss(state: dict, loader: DataLoader) -> float:
    task = _task()
    task.load_state_dict(state)
    task.eval()
    with torch.no_grad():
        losses = [nn.functional.cross_entropy(task.model(x), y, reduction="sum") for x, y in loader]
    return float(sum(losses) / len(loader.dataset))


def test_ema_is_what_validation_checkpoint_and_test_see(tmp_path):
    trainer, task, last = _fit(tmp_path, EMA(decay=0.8))
    verify(last)  # data only: loads with weights_only=True
    checkpoint = torch.load(last, weights_only=True)
    averaged, current = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert not torch.equal(averaged["model.0.weight"], current["model.0.weight"])
    val = _data(32, 1)
    # the last validation ran on the averaged weights, which differ in loss from the trained ones
    assert trainer.callback_metrics["val/loss"].item() == pytest.approx(_loss(averaged, val), rel=1e-4)
    assert abs(_loss(averaged, val) - _loss(current, val)) > 1e-3
    # training ends with the averaged weights in the model
    assert torch.equal(task.model[0].weight, averaged["model.0.weight"])
    # the test of the checkpoint after fit (as train.py runs it) uses the averaged weights too
    results = trainer.test(_task(), _data(32, 1), ckpt_path=str(last), verbose=False, weights_only=True)
    assert results[0]["test/loss"] == pytest.approx(_loss(averaged, val), rel=1e-4)


def test_swa_starts_at_its_epoch_and_averages_per_epoch(tmp_path):
    trainer, task, last = _fit(tmp_path, SWA(swa_epoch_start=2), epochs=3)
    (callback,) = [c for c in trainer.callbacks if isinstance(c, SWA)]
    assert int(callback._average_model.n_averaged) == 1  # the end of epoch 2 only (epochs 0 and 1 before the start)
    epoch1 = torch.load(tmp_path / "epoch=1-step=16.ckpt", weights_only=True)
    assert "current_model_state" not in epoch1  # no average yet: the trained weights are checkpointed
    final = torch.load(last, weights_only=True)
    # one update of an equal average: the average is the weights of that moment
    assert torch.equal(final["state_dict"]["model.0.weight"], final["current_model_state"]["model.0.weight"])


def test_swa_fraction_needs_max_epochs():
    swa = SWA(swa_epoch_start=0.5)
    trainer = L.Trainer(max_epochs=-1, max_steps=4, logger=False, accelerator="cpu", devices=1)
    with pytest.raises(ConfigError, match="max_epochs"):
        swa.setup(trainer, _task(), "fit")
    with pytest.raises(ConfigError, match="decay"):
        EMA(decay=1.5)


def test_ema_run_checkpoint_reloads_for_eval(workdir):
    small = ["data.train_subset=64", "data.val_subset=32", "data.test_subset=32", "data.batch_size=16",
             "trainer.max_epochs=1", "model=timm", "model.name=test_resnet", *QUIET]
    run_cli(["callbacks=[default,ema]", "callbacks.ema.decay=0.5", *small], cwd=workdir)
    (run_dir,) = run_dirs(workdir)
    tested = read_summary(run_dir)["test"]["test/acc"]
    run_cli(["eval", f"run_dir={run_dir}"], cwd=workdir)
    (report,) = (run_dir / "eval").glob("*/report.json")
    # eval rebuilds the run from its best checkpoint: the averaged weights the test after fit measured
    assert json.loads(report.read_text())["accuracy"] == pytest.approx(tested, abs=1e-6)
