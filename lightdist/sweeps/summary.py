"""One table for a whole sweep: every job's overrides and metrics, best first.

Written at the end of a Hydra multirun (grid, random or Optuna search) by the SweepSummary
callback, or on demand for any folder of runs (`lightdist sweep --summarize DIR`, e.g. a SLURM
array sweep, whose points end separately). Runs that differ only in `data.kfold.fold` are the
folds of one configuration: they also get a cross-validation table with mean and std over folds.
"""

import csv
import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lightdist.sweeps import FOLD_KEY

log = logging.getLogger(__name__)

TABLE = "sweep_summary"
CV_TABLE = "cv_summary"
# Overrides the sweeper adds for its own bookkeeping: not hyperparameters.
_BOOKKEEPING = ("search_trial.", "hydra.", "run_dir=")


def _overrides(run: Path) -> dict[str, str]:
    file = run / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return {}
    pairs = (line.split("=", 1) for line in yaml.safe_load(file.read_text()) or [] if "=" in line)
    return {k.lstrip("+~"): v for k, v in pairs if not k.lstrip("+~").startswith(_BOOKKEEPING)}


def _status(summary: dict[str, Any]) -> str:
    if not summary:
        return "failed"
    if summary.get("diverged"):
        return "diverged"
    if summary.get("pruned"):
        return "pruned"
    if summary.get("preempted"):
        return "preempted"
    return "interrupted" if summary.get("interrupted") else "completed"


def objective(summary: dict[str, Any], metric: str) -> float | None:
    """The value a sweep optimises: the best checkpoint's score when it monitors `metric`, else the last."""
    if summary.get("monitor") == metric and summary.get("best_score") is not None:
        return float(summary["best_score"])
    value = summary.get("validation", {}).get(metric)
    return None if value is None else float(value)


def _run_dirs(folder: Path) -> list[Path]:
    """Run directories at any depth under `folder` (a sweep directory, or a folder of sweeps)."""
    found = {p.parent for p in folder.rglob("summary.json")}
    found |= {p.parent.parent for p in folder.rglob(".hydra/overrides.yaml")}

    def order(run: Path) -> list:
        return [(0, int(part)) if part.isdigit() else (1, part) for part in run.relative_to(folder).parts]

    return sorted((r for r in found if r != folder), key=order)


def collect(folder: Path, metric: str) -> list[dict[str, Any]]:
    """One row per run directory under `folder`."""
    rows = []
    for run in _run_dirs(folder):
        summary_file = run / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        rows.append({
            "job": str(run.relative_to(folder)),
            "overrides": _overrides(run),
            "status": _status(summary),
            "objective": objective(summary, metric),
            "metrics": {**summary.get("validation", {}), **summary.get("test", {})},
            "epochs": summary.get("epochs"),
            "wall_time_s": summary.get("wall_time_s"),
        })
    return rows


def _rank(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Best first; runs without a value (failed, or never validated) last, in job order."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (r["objective"] is None or not math.isfinite(r["objective"]),
                                       sign * r["objective"] if r["objective"] is not None else 0.0))


def _varying(rows: list[dict[str, Any]]) -> list[str]:
    """Override keys whose value differs between runs (or that only some runs set): the swept ones."""
    keys = sorted({k for r in rows for k in r["overrides"]})
    return [k for k in keys if len({r["overrides"].get(k) for r in rows}) > 1]


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def _short(value: str) -> str:
    """Sampled floats (0.0011155792840695788) shortened to 4 significant digits for the Markdown table."""
    try:
        return f"{float(value):.4g}" if any(c in value for c in ".eE") else value
    except ValueError:
        return value


def cross_validation(rows: list[dict[str, Any]], metric: str, mode: str = "max") -> list[dict[str, Any]]:
    """Mean and sample std over the folds of each configuration that ran two folds or more, best first.

    A configuration is named by its overrides that vary between runs (other than the fold)."""
    swept = [k for k in _varying(rows) if k != FOLD_KEY]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if FOLD_KEY in row["overrides"]:
            config = tuple((k, row["overrides"].get(k, "")) for k in swept)
            groups.setdefault(config, []).append(row)
    test_metric = "test/" + metric.split("/", 1)[-1]
    out = []
    for config, folds in groups.items():
        folds = sorted(folds, key=lambda r: int(r["overrides"][FOLD_KEY]))
        done = [r for r in folds if r["objective"] is not None]
        if len(folds) < 2:
            continue
        entry: dict[str, Any] = {"overrides": dict(config), "folds": len(folds), "completed": len(done)}
        for name, values in ((metric, [r["objective"] for r in done]),
                             (test_metric, [r["metrics"][test_metric] for r in done if test_metric in r["metrics"]])):
            if values:
                entry[name] = {"mean": statistics.fmean(values),
                               "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                               "per_fold": values}
        out.append(entry)
    sign = -1.0 if mode == "max" else 1.0
    return sorted(out, key=lambda e: sign * e[metric]["mean"] if metric in e else math.inf)


def write(folder: str | Path, metric: str, mode: str = "max") -> tuple[Path, Path] | None:
    """sweep_summary.csv and sweep_summary.md (and cv_summary.* for k folds) in `folder`."""
    folder = Path(folder)
    rows = _rank(collect(folder, metric), mode)
    if not rows:
        return None
    swept = _varying(rows)
    fixed = {k: v for k, v in rows[0]["overrides"].items() if k not in swept}
    metric_names = sorted({m for r in rows for m in r["metrics"]})
    header = ["rank", "job", *swept, f"objective ({metric}, {mode})", "status", "epochs", "wall_time_s",
              *metric_names]
    def cells(fmt):
        return [[str(i + 1), r["job"], *[r["overrides"].get(k, "") for k in swept], fmt(r["objective"]),
                 r["status"], fmt(r["epochs"]), fmt(r["wall_time_s"]), *[fmt(r["metrics"].get(m)) for m in metric_names]]
                for i, r in enumerate(rows)]

    csv_path, md_path = folder / f"{TABLE}.csv", folder / f"{TABLE}.md"
    with csv_path.open("w", newline="") as f:  # full precision here, rounded in the Markdown table
        csv.writer(f).writerows([header, *cells(lambda v: "" if v is None else str(v))])
    table = cells(_fmt)
    test_metric = "test/" + metric.split("/", 1)[-1]
    shown = [c for c in (test_metric,) if c in metric_names]
    md_header = header[: 3 + len(swept) + 2] + shown
    lines = [f"# Sweep summary: {folder.name}", "",
             f"{len(rows)} runs, best first by {metric} ({mode}); every metric is in {csv_path.name}.", ""]
    if fixed:
        lines += ["Common overrides: " + " ".join(f"`{k}={v}`" for k, v in fixed.items()), ""]
    lines += ["| " + " | ".join(md_header) + " |", "|" + "---|" * len(md_header)]
    for row in table:
        row = [*row[:2], *map(_short, row[2 : 2 + len(swept)]), *row[2 + len(swept):]]
        lines.append("| " + " | ".join(row[: len(md_header) - len(shown)]
                                       + [row[header.index(c)] for c in shown]) + " |")
    cv = cross_validation(rows, metric, mode)
    if cv:
        _write_cv(folder, cv, metric, lines)
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def _write_cv(folder: Path, cv: list[dict[str, Any]], metric: str, lines: list[str]) -> None:
    (folder / f"{CV_TABLE}.json").write_text(json.dumps(cv, indent=2) + "\n")
    names = [n for n in (metric, "test/" + metric.split("/", 1)[-1]) if any(n in e for e in cv)]
    lines += ["", "## Cross-validation (mean +- sample std over folds)", "",
              "| configuration | folds | " + " | ".join(names) + " | per fold |", "|---|---|" + "---|" * (len(names) + 1)]
    for entry in cv:
        config = " ".join(f"{k}={v}" for k, v in entry["overrides"].items()) or "(as run)"
        cells = [f"{entry[n]['mean']:.4f} +- {entry[n]['std']:.4f}" if n in entry else "" for n in names]
        per_fold = ", ".join(f"{v:.4f}" for v in entry[metric]["per_fold"]) if metric in entry else ""
        lines.append(f"| {config} | {entry['completed']}/{entry['folds']} | " + " | ".join(cells) + f" | {per_fold} |")
        for n in names:
            if n in entry:
                log.info("%s over %d folds: %.4f +- %.4f", n, len(entry[n]["per_fold"]), entry[n]["mean"],
                         entry[n]["std"])


class SweepSummary(Callback):
    """Hydra callback: the summary table of a multirun, in its sweep directory, when it ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from lightdist.distributed.ranks import is_rank_zero

        folder = Path(config.hydra.sweep.dir)
        if not is_rank_zero() or not folder.is_dir():  # ranks > 0 started by srun run the sweep too
            return
        written = write(folder, config.get("optimized_metric") or config.monitor.metric, config.monitor.mode)
        if written:
            log.info("sweep summary: %s", written[1])
