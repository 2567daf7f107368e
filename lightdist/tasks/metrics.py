"""Classification metrics (torchmetrics: synced across ranks when computed) and their plots."""

from pathlib import Path

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    metrics = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "precision": MulticlassPrecision(num_classes, average="macro"),
        "recall": MulticlassRecall(num_classes, average="macro"),
        "f1": MulticlassF1Score(num_classes, average="macro"),
    }
    if num_classes > 5:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics, prefix=prefix)


# The figures are drawn here with matplotlib rather than by torchmetrics' Metric.plot: torchmetrics only
# plots when matplotlib was importable while torchmetrics itself was imported, and lightdist.main keeps
# matplotlib out of that import (0.25 s of every process's start-up; see HIDDEN_FROM_TORCHMETRICS).


def save_confusion_matrix(counts: torch.Tensor, class_names: list[str] | None, path: Path,
                          title: str = "Test confusion matrix (rows: true, columns: predicted)"):
    """Draw the (already synced) confusion counts, rows true and columns predicted, with class names
    and each cell's count where they fit; save it to `path` and return the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = counts.detach().cpu().long()
    n = counts.shape[0]
    size = max(5.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(counts.numpy(), cmap="Blues", interpolation="nearest")
    labels = list(class_names) if class_names and n <= 30 else None
    if n <= 30:  # more ticks than that would overlap
        names = labels or [str(i) for i in range(n)]
        ax.set_xticks(range(n), names, rotation=45 if labels else 0, ha="right" if labels else "center")
        ax.set_yticks(range(n), names)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if n <= 20:
        dark = counts.max().item() / 2
        for i in range(n):
            for j in range(n):
                c = counts[i, j].item()
                ax.text(j, i, str(c), ha="center", va="center", fontsize=8, color="white" if c > dark else "black")
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return fig


def draw_roc(ax, curve, scores: torch.Tensor, labels: list[str] | None) -> None:
    """One-vs-rest ROC curve of every class on `ax`: `curve` is MulticlassROC's (fpr, tpr, thresholds),
    per class (a list, or a tensor with one row per class when thresholds are binned)."""
    fpr, tpr, _ = curve
    for i in range(len(fpr)):
        name = labels[i] if labels else str(i)
        ax.plot(fpr[i].cpu().numpy(), tpr[i].cpu().numpy(), label=f"{name} AUC={float(scores[i]):.3f}")
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    if labels:
        ax.legend(fontsize=7, loc="lower right")
