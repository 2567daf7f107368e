"""Classification metrics (torchmetrics: synced across ranks when computed) and their plots."""

from pathlib import Path

from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
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


def save_confusion_matrix(matrix: MulticlassConfusionMatrix, class_names: list[str] | None, path: Path,
                          val=None, title: str = "Test confusion matrix (rows: true, columns: predicted)"):
    """Plot the (already synced) confusion matrix, or the computed counts `val`, with class names;
    returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = matrix.num_classes
    size = max(5.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    labels = list(class_names) if class_names and n <= 30 else None
    matrix.plot(val=val, ax=ax, labels=labels, add_text=n <= 20)
    if labels:
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return fig

