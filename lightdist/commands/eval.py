"""`lightdist eval run_dir=<run> [ckpt=best|last|<path>] [split=test|val|train] [overrides of the run's config]`.

Evaluates a trained classification run on one split. Keys other than the eval keys change the
run's own saved config: data.* (batch sizes, subsets, root), trainer=... / trainer.* (devices,
precision), strategy=..., threads_per_rank, matmul_precision, seed. The model and the task always
come from the run. The report goes to a new folder <run_dir>/eval/<id>_<split>/.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lightdist.config.compose import command_args
from lightdist.evaluation.job import RUN_KEYS, evaluate, new_folder, prepare


@dataclass
class EvalOptions:
    run_dir: str  # the run directory (holding config.yaml and checkpoints/)
    ckpt: str = "best"  # best (the run's best checkpoint), last, or a checkpoint path
    split: Literal["test", "val", "train"] = "test"  # the run's own splits, each sample once, no augmentation
    calibration_bins: int = 15  # equal-width confidence bins of the calibration error and reliability diagram
    roc_thresholds: int | None = None  # null: exact ROC curves and AUROC; a number bins the scores


def _run_key(key: str) -> bool:
    return key.lstrip("+").split(".", 1)[0] in RUN_KEYS


def run(argv: list[str]) -> None:
    from lightdist import run_dir as rd
    from lightdist.distributed.launch import announce_job_config, isolated_job
    from lightdist.distributed.ranks import is_rank_zero

    run_keys = ", ".join(k + (".*" if k in ("data", "trainer", "strategy") else "") for k in RUN_KEYS)
    args = command_args(argv, "eval", EvalOptions, rest=_run_key, unknown="eval cannot override '{key}'",
                        rest_hint=f"keys of the run's config: {run_keys}; the model and the task are the run's")
    job = prepare(args.options, args.rest, argv)
    folder = new_folder(Path(job.eval.run_dir), job.eval.split)
    job.eval.output_dir = str(folder)
    with isolated_job():
        if is_rank_zero():
            announce_job_config(rd.save_config(folder, job))
        report = evaluate(job)
    if report is not None:
        print(f"{report['split']}: accuracy {report['accuracy']:.4f}, macro F1 {report['macro']['f1']:.4f}, "
              f"ECE {report['ece']:.4f} on {report['num_samples']} samples")
        print(f"report: {folder / 'report.md'}")
