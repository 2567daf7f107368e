"""The evaluation report: report.json (every number), report.md (tables and figures), PNGs. Rank 0 only."""

import math
from pathlib import Path
from typing import Any

import torch

from lightdist import run_dir as rd
from lightdist.evaluation.metrics import expected_calibration_error

REPORT_JSON, REPORT_MD = "report.json", "report.md"
FIGURES = {"confusion_matrix": "confusion_matrix.png", "roc": "roc.png", "reliability": "reliability.png"}


def _num(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else round(value, 6)


def reliability_rows(results: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """One row per bin; the extra slot for confidence exactly 1 joins the last bin."""
    count, confidence, correct = (results[k].clone() for k in ("bin_count", "bin_confidence", "bin_correct"))
    for t in (count, confidence, correct):
        t[-2] += t[-1]
    n_bins = len(count) - 1
    rows = []
    for i in range(n_bins):
        n = float(count[i])
        rows.append({"lower": round(i / n_bins, 6), "upper": round((i + 1) / n_bins, 6), "count": int(n),
                     "confidence": _num(confidence[i] / n) if n else None,
                     "accuracy": _num(correct[i] / n) if n else None})
    return rows


def build_report(results: dict[str, Any], class_names: list[str], meta: dict[str, Any]) -> dict[str, Any]:
    confusion = results["confusion"].long()
    support = confusion.sum(dim=1)
    per_class = [{"label": name, "precision": _num(results["precision"][i]), "recall": _num(results["recall"][i]),
                  "f1": _num(results["f1"][i]), "auroc": _num(results["auroc"][i]), "support": int(support[i])}
                 for i, name in enumerate(class_names)]
    report = {
        **meta,
        "num_samples": int(support.sum()),
        "accuracy": _num(results["accuracy"]),
        **({"accuracy_top5": _num(results["accuracy_top5"])} if "accuracy_top5" in results else {}),
        "loss": _num(results["loss"]),
        "ece": _num(results["ece"]),
        "ece_of_bins": _num(expected_calibration_error(results)),
        "macro": {k: _num(results[f"{k}_macro"]) for k in ("precision", "recall", "f1", "auroc")},
        "weighted": {k: _num(results[f"{k}_weighted"]) for k in ("precision", "recall", "f1", "auroc")},
        "per_class": per_class,
        "confusion_matrix": {"rows": "true", "columns": "predicted", "labels": list(class_names),
                             "counts": confusion.tolist()},
        "reliability": reliability_rows(results),
        "figures": dict(FIGURES),
    }
    return report


def _markdown(report: dict[str, Any]) -> str:
    def cell(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [
        f"# Evaluation: {report['split']} split",
        "",
        f"- run: `{report['run_dir']}`",
        f"- checkpoint: `{report['checkpoint']}`",
        f"- samples: {report['num_samples']} (world size {report['world_size']})",
        f"- created: {report['created']}",
        *([f"- overrides: `{' '.join(report['overrides'])}`"] if report.get("overrides") else []),
        "",
        "| metric | value |",
        "|---|---|",
        f"| accuracy | {cell(report['accuracy'])} |",
        *([f"| top-5 accuracy | {cell(report['accuracy_top5'])} |"] if "accuracy_top5" in report else []),
        f"| loss (cross-entropy) | {cell(report['loss'])} |",
        f"| expected calibration error | {cell(report['ece'])} |",
        "",
        "| class | precision | recall | F1 | AUROC | support |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["per_class"]:
        lines.append(f"| {row['label']} | {cell(row['precision'])} | {cell(row['recall'])} | {cell(row['f1'])} | "
                     f"{cell(row['auroc'])} | {row['support']} |")
    for average in ("macro", "weighted"):
        a = report[average]
        lines.append(f"| *{average} average* | {cell(a['precision'])} | {cell(a['recall'])} | {cell(a['f1'])} | "
                     f"{cell(a['auroc'])} | {report['num_samples']} |")
    lines += ["", "![confusion matrix](confusion_matrix.png)", "", "![ROC curves](roc.png)", "",
              "![reliability diagram](reliability.png)", ""]
    return "\n".join(lines)


def _figures(folder: Path, results: dict[str, Any], class_names: list[str], split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lightdist.tasks.metrics import draw_roc, save_confusion_matrix

    n = len(class_names)
    fig = save_confusion_matrix(results["confusion"], class_names, folder / FIGURES["confusion_matrix"],
                                title=f"{split.capitalize()} confusion matrix (rows: true, columns: predicted)")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 6))
    draw_roc(ax, results["roc"], results["auroc"], list(class_names) if n <= 20 else None)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set_title(f"ROC one-vs-rest, {split} split (macro AUROC {float(results['auroc_macro']):.4f})")
    fig.tight_layout()
    fig.savefig(folder / FIGURES["roc"], dpi=120)
    plt.close(fig)

    rows = reliability_rows(results)
    width = rows[0]["upper"] - rows[0]["lower"]
    used = [r for r in rows if r["count"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 7), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    top.bar([r["lower"] for r in used], [r["accuracy"] for r in used], width=width, align="edge",
            edgecolor="black", label="accuracy")
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.plot([r["confidence"] for r in used], [r["accuracy"] for r in used], "o", color="tab:red",
             label="mean confidence")
    top.set_ylabel("accuracy")
    top.set_title(f"Reliability diagram, {split} split (ECE {float(results['ece']):.4f})")
    top.legend(loc="upper left")
    bottom.bar([r["lower"] for r in rows], [r["count"] for r in rows], width=width, align="edge", edgecolor="black")
    bottom.set_xlabel("confidence of the predicted class")
    bottom.set_ylabel("samples")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(folder / FIGURES["reliability"], dpi=120)
    plt.close(fig)


def write_report(folder: Path, results: dict[str, Any], class_names: list[str], meta: dict[str, Any]
                 ) -> dict[str, Any]:
    report = build_report(results, class_names, meta)
    _figures(folder, results, class_names, meta["split"])
    rd.write_json(folder / REPORT_JSON, report)
    (folder / REPORT_MD).write_text(_markdown(report))
    return report
