"""learning_curves.png in the run directory: loss and the monitored metric per epoch.

Drawn at the end of fit by rank 0 from the run's own metrics.csv (the csv logger): that
file holds every epoch of a resumed or requeued run exactly once, so the curves cover the
whole run, not only the last segment. Step-level values (train/loss) are averaged per
epoch; a metric the run never logged (RL runs have no val/loss) is simply not drawn.
"""

import csv
import logging
import math
from collections import defaultdict
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger

log = logging.getLogger(__name__)

FILENAME = "learning_curves.png"


def epoch_means(metrics_csv: Path) -> dict[str, dict[int, float]]:
    """{metric: {epoch: mean of its logged values in that epoch}} from a Lightning metrics.csv."""
    sums: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            epoch = int(float(row["epoch"]))
            for key, value in row.items():
                if key in ("epoch", "step") or value in (None, ""):
                    continue
                try:
                    number = float(value)
                except ValueError:
                    continue
                if math.isfinite(number):
                    sums[key][epoch].append(number)
    return {key: {e: sum(v) / len(v) for e, v in sorted(by_epoch.items())} for key, by_epoch in sums.items()}


def panels(curves: dict[str, dict[int, float]], monitor: str | None) -> list[tuple[str, list[str]]]:
    """(title, metrics) per panel: the losses, then the monitored metric with its training counterpart."""
    out = []
    losses = [k for k in ("train/loss", "val/loss") if k in curves]
    if losses:
        out.append(("loss", losses))
    if monitor and monitor not in ("train/loss", "val/loss"):
        name = monitor.split("/", 1)[-1]
        shown = [k for k in (f"train/{name}", monitor) if k in curves]
        if shown:
            out.append((name, shown))
    return out


def draw_learning_curves(metrics_csv: Path, output: Path, monitor: str | None = None) -> Path | None:
    """Draw what metrics.csv holds; None (and no file) when it holds none of the metrics."""
    curves = epoch_means(metrics_csv)
    layout = panels(curves, monitor)
    if not layout:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(layout), figsize=(5.5 * len(layout), 4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], layout):
        for key in keys:
            epochs = list(curves[key])
            ax.plot(epochs, [curves[key][e] for e in epochs], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


class LearningCurves(L.Callback):
    """Rank 0 draws learning_curves.png at the end of fit (after the loggers flushed their files)."""

    def __init__(self, monitor: str | None = None, filename: str = FILENAME):
        self.monitor = monitor
        self.filename = filename

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
        path = Path(csv_logger.experiment.metrics_file_path) if csv_logger is not None else None
        if path is None or not path.is_file():
            log.info("no learning curves: they are drawn from metrics.csv, which needs the csv logger")
            return
        try:
            draw_learning_curves(path, Path(trainer.default_root_dir) / self.filename, self.monitor)
        except (OSError, csv.Error, ValueError) as exc:  # a figure is not worth failing a finished run
            log.warning("could not draw learning curves from %s: %s", path, exc)
