"""The Lightning side of `lightdist eval`: trainer.test runs the loop, the strategy and the ranks.

Under DDP each rank sees its own shard of the split (ClassificationDataModule's evaluation
sampler and the text bucket sampler never repeat a sample, unlike DistributedSampler's
padding), and torchmetrics sums or gathers the states of every rank on compute(): the
report counts each sample exactly once, whatever the world size.
"""

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torchmetrics import MeanMetric

from lightdist.errors import DataError
from lightdist.evaluation.metrics import evaluation_metrics


class Evaluator(L.LightningModule):
    """A trained classification task (its own batch handling and forward) with the report's metrics."""

    def __init__(self, task: L.LightningModule, num_classes: int, calibration_bins: int = 15,
                 roc_thresholds: int | None = None):
        super().__init__()
        self.task = task
        self.metrics = evaluation_metrics(num_classes, calibration_bins, roc_thresholds)
        self.loss = MeanMetric()
        self.results: dict[str, Any] | None = None

    def networks(self) -> list[torch.nn.Module]:
        """What strategy=fsdp2 shards: the trained task's networks."""
        return self.task.networks() if hasattr(self.task, "networks") else [self.task]

    def configure_model(self) -> None:
        """Nothing (see Task.configure_model): Lightning's ModelParallelStrategy insists on the hook."""

    def test_step(self, batch: Any, batch_idx: int) -> None:
        inputs, targets = self.task.split_batch(batch)
        logits = self.task(inputs).float()
        self.loss.update(F.cross_entropy(logits, targets, reduction="none"))
        self.metrics.update(torch.softmax(logits, dim=-1), targets)

    def on_test_epoch_end(self) -> None:
        # Every rank computes (the collectives need all of them); rank 0 writes the report afterwards.
        results = self.metrics.compute()
        results["loss"] = self.loss.compute()
        self.results = _to_cpu(results)
        self.metrics.reset()
        self.loss.reset()


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


class OneSplit(L.LightningDataModule):
    """One split of a classification data module, served as the test data of trainer.test.

    The wrapped module keeps doing what it does for training: its setup (under the trainer,
    so text ranks agree on the tokenizer), its samplers and its on-device batch transform
    (image normalisation).
    """

    def __init__(self, datamodule: L.LightningDataModule, split: str):
        super().__init__()
        self.datamodule = datamodule
        self.split = split

    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    def setup(self, stage: str) -> None:
        self.datamodule.trainer = self.trainer
        self.datamodule.setup(stage)
        if getattr(self.datamodule, f"{self.split}_set", None) is None:
            raise DataError(f"the data module {type(self.datamodule).__name__} has no {self.split} split",
                            hint="pick another split=")

    def test_dataloader(self):
        return self.datamodule.eval_dataloader(self.split)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.datamodule.on_after_batch_transfer(batch, dataloader_idx)

    def teardown(self, stage: str) -> None:
        self.datamodule.teardown(stage)


def build_eval_trainer(cfg: DictConfig, folder: Path) -> L.Trainer:
    """The run's trainer settings (devices, precision, strategy) without its training apparatus:
    no loggers, no checkpoints, no callbacks, and always the whole split."""
    from hydra.utils import instantiate

    from lightdist.distributed.strategy import build_strategy, trainer_arguments

    strategy = build_strategy(cfg.get("strategy"), cfg.trainer, timeout_s=(cfg.get("distributed") or {}).get("timeout_s"))
    return instantiate(
        cfg.trainer,
        **trainer_arguments(cfg, strategy),
        callbacks=[],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        fast_dev_run=False,
        overfit_batches=0.0,
        limit_test_batches=None,
        default_root_dir=str(folder),
    )
