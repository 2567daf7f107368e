"""The metrics of an evaluation report: torchmetrics throughout, synced across ranks on compute()."""

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MulticlassROC,
)


class ReliabilityBins(Metric):
    """Per-bin sample count, summed confidence and correct predictions of the top-1 class.

    Written here because torchmetrics' MulticlassCalibrationError computes the ECE but does not
    expose its bins, which a reliability diagram needs. Same binning as torchmetrics (equal-width
    bins, `bucketize(right=True) - 1`, so a confidence of exactly 1 gets an extra last slot),
    so the ECE of these bins equals torchmetrics' ECE. Sum states: synced exactly across ranks.
    """

    full_state_update = False

    def __init__(self, n_bins: int = 15, **kwargs):
        super().__init__(**kwargs)
        self.n_bins = n_bins
        self.register_buffer("boundaries", torch.linspace(0, 1, n_bins + 1), persistent=False)
        for name in ("count", "confidence", "correct"):
            self.add_state(name, default=torch.zeros(n_bins + 1, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        confidence, predicted = probs.float().max(dim=-1)
        index = torch.bucketize(confidence, self.boundaries.to(confidence), right=True) - 1
        self.count.scatter_add_(0, index, torch.ones_like(confidence, dtype=torch.float64))
        self.confidence.scatter_add_(0, index, confidence.double())
        self.correct.scatter_add_(0, index, (predicted == target).double())

    def compute(self) -> dict[str, torch.Tensor]:
        # MetricCollection flattens dict results into its own keys: these names are the report's.
        return {"bin_count": self.count, "bin_confidence": self.confidence, "bin_correct": self.correct}


def expected_calibration_error(bins: dict[str, torch.Tensor]) -> float:
    """ECE of ReliabilityBins' output (what MulticlassCalibrationError(norm='l1') computes)."""
    count = bins["bin_count"]
    used = count > 0
    gap = (bins["bin_correct"][used] - bins["bin_confidence"][used]).abs()  # |acc - conf| * n per bin
    return float(gap.sum() / count.sum())


def evaluation_metrics(num_classes: int, calibration_bins: int = 15, roc_thresholds: int | None = None
                       ) -> MetricCollection:
    """Updated with (class probabilities, targets). AUROC/ROC are exact (every score kept) unless
    `roc_thresholds` bins them; the collection's compute groups keep one copy of shared states."""
    c = num_classes
    metrics: dict[str, Metric] = {
        "accuracy": MulticlassAccuracy(c, average="micro"),
        "confusion": MulticlassConfusionMatrix(c),
        "ece": MulticlassCalibrationError(c, n_bins=calibration_bins, norm="l1"),
        "reliability": ReliabilityBins(calibration_bins),
        "roc": MulticlassROC(c, thresholds=roc_thresholds),
    }
    for average in (None, "macro", "weighted"):
        suffix = "" if average is None else f"_{average}"
        metrics["precision" + suffix] = MulticlassPrecision(c, average=average, zero_division=0)
        metrics["recall" + suffix] = MulticlassRecall(c, average=average, zero_division=0)
        metrics["f1" + suffix] = MulticlassF1Score(c, average=average, zero_division=0)
        metrics["auroc" + suffix] = MulticlassAUROC(c, average=average, thresholds=roc_thresholds)
    if c > 5:
        metrics["accuracy_top5"] = MulticlassAccuracy(c, top_k=5, average="micro")
    # Shared states named, not discovered: torchmetrics' automatic grouping merges metrics whose
    # states happen to be equal after the first batch, which each rank decides on its own batch. A
    # model predicting few classes made two ranks group differently, and their synced states then
    # crossed between metrics (per-class precision of 1.0 for a class never predicted).
    groups = [[name + suffix for name in ("precision", "recall", "f1")] for suffix in ("", "_macro", "_weighted")]
    groups.append(["roc", "auroc", "auroc_macro", "auroc_weighted"])  # every score, kept once
    return MetricCollection(metrics, compute_groups=groups)

