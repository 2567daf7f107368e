"""The job of `lightdist eval` (lightdist.commands.eval): a run's config with overrides, checks, the eval folder.

Rank 0 takes the eval options, applies the other overrides to the
run's own saved config, checks everything (before anything is created), makes a new
folder `<run_dir>/eval/<id>_<split>/`, saves the resolved job there (`config.yaml`: the
run's config plus an `eval` node) and evaluates. Under DDP, Lightning's launcher re-runs
the command for ranks > 0; like training children they find the saved job through
LIGHTDIST_JOB_CONFIG and run `evaluate` on it (commands.train.run_child dispatches on the `eval` node).
"""

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightdist.config.compose import compose_checked
from lightdist.errors import ConfigError

EVAL_DIR = "eval"
# Parts of the run's config that an evaluation may change; the model and the task are the run's.
RUN_KEYS = ("data", "trainer", "strategy", "threads_per_rank", "matmul_precision", "seed")
GROUPS = ("trainer", "strategy")


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """Hydra override syntax on a saved config: `trainer=cpu_ddp` takes conf/trainer/cpu_ddp.yaml,
    `data.batch_size=64` sets a value (typed as Hydra types it). Groups first, as Hydra does."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        raise ConfigError(str(exc).strip().splitlines()[0]) from exc
    parsed.sort(key=lambda o: o.key_or_group not in GROUPS)
    for o in parsed:
        key = o.key_or_group
        if o.is_sweep_override() or o.is_delete():
            raise ConfigError(f"eval takes one value per key, not '{o.input_line}'")
        if key in GROUPS:
            composed = compose_checked([f"{key}={o.value()}"], "config")
            cfg[key] = OmegaConf.create(OmegaConf.to_container(composed[key], resolve=True))
        else:
            OmegaConf.update(cfg, key, o.value(), merge=False, force_add=True)
    return cfg


def check_run_config(cfg: DictConfig, run_dir: Path) -> None:
    from hydra.utils import get_class

    from lightdist.config.validate import check_devices, check_precision, check_targets
    from lightdist.tasks.classification import ClassificationTask

    task = get_class(cfg.task._target_)
    if not issubclass(task, ClassificationTask):
        raise ConfigError(f"eval applies to classification runs; {run_dir} is a {task.__name__} run",
                          hint="reinforcement-learning runs are evaluated by their test episodes (summary.json)")
    check_targets(cfg)
    check_devices(cfg.trainer)
    check_precision(cfg.trainer, cfg.get("strategy"))


def prepare(options: Any, run_overrides: list[str], given: list[str]) -> DictConfig:
    """Everything checked, nothing created: the resolved job (the run's config plus an `eval` node).

    `options` has the eval keys (lightdist.commands.eval.EvalOptions), `run_overrides` change the
    run's config, `given` is the command line as recorded in the report."""
    from lightdist import run_dir as rd
    from lightdist.checkpoints import verify
    from lightdist.data.base import ClassificationDataModule
    from lightdist.runs import build_datamodule, find_checkpoint, is_run_dir

    if options.calibration_bins < 1 or (options.roc_thresholds is not None and options.roc_thresholds < 2):
        raise ConfigError("calibration_bins must be >= 1 and roc_thresholds null or >= 2")
    run_dir = Path(options.run_dir).expanduser().resolve()
    if not is_run_dir(run_dir):
        raise ConfigError(f"{run_dir} is not a run directory (no {rd.CONFIG_FILE})",
                          hint="pass run_dir=<a directory under outputs/ that holds config.yaml>")
    cfg = apply_overrides(rd.load_config(run_dir / rd.CONFIG_FILE), run_overrides)
    check_run_config(cfg, run_dir)
    strategy = cfg.get("strategy") or {}
    if strategy.get("start_method") in ("spawn", "fork", "forkserver"):
        # Ranks started by multiprocessing keep their results in their own processes, and the
        # report is built from rank 0's: evaluate with ranks started as processes of this command.
        strategy.start_method = "popen"
    checkpoint = find_checkpoint(run_dir, options.ckpt).resolve()
    verify(checkpoint)  # data only (weights_only=True), refused before any rank starts
    datamodule = build_datamodule(cfg)
    if not isinstance(datamodule, ClassificationDataModule):
        raise ConfigError(f"data {type(datamodule).__name__} has no labelled splits to evaluate")
    datamodule.check_available()
    job = OmegaConf.merge(cfg, {"eval": {
        "run_dir": str(run_dir), "checkpoint": str(checkpoint), "split": options.split,
        "calibration_bins": options.calibration_bins, "roc_thresholds": options.roc_thresholds,
        "overrides": list(given), "output_dir": None}})
    return job


def new_folder(run_dir: Path, split: str) -> Path:
    """A folder no earlier evaluation used, named by the run id (the SLURM job, or the start time
    and a random suffix). Ranks started by srun/torchrun compute the same name (the srun step
    tells evaluations of one job apart) and write nothing; a single process takes the next free
    name when a job evaluates more than once."""
    import os

    from lightdist.config.resolvers import run_id
    from lightdist.distributed.ranks import is_rank_zero, launched_externally

    base = run_dir / EVAL_DIR / f"{run_id()}_{split}"
    if launched_externally():
        step = os.environ.get("SLURM_STEP_ID")
        folder = base.with_name(f"{base.name}_step{step}") if step else base
        if is_rank_zero():
            folder.mkdir(parents=True, exist_ok=False)
        return folder
    folder, n = base, 1
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=False)
            return folder
        except FileExistsError:
            n += 1
            folder = base.with_name(f"{base.name}-{n}")


def evaluate(job: DictConfig) -> dict[str, Any] | None:
    """Every rank: rebuild the run, trainer.test on the split; rank 0 writes and returns the report."""
    import lightning as L

    from lightdist.distributed.ranks import processes_per_node
    from lightdist.distributed.threads import configure_threads
    from lightdist.evaluation.module import Evaluator, OneSplit, build_eval_trainer
    from lightdist.evaluation.report import write_report
    from lightdist.runs import load_run

    e = job.eval
    cfg = OmegaConf.masked_copy(job, [k for k in job.keys() if k != "eval"])
    configure_threads(cfg.threads_per_rank, processes_per_node(cfg.trainer))
    if cfg.get("matmul_precision"):
        import torch

        torch.set_float32_matmul_precision(cfg.matmul_precision)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run = load_run(e.run_dir, e.checkpoint, cfg=cfg)
    class_names = [str(c) for c in run.facts.get("class_names") or range(run.facts["num_classes"])]
    evaluator = Evaluator(run.task, run.facts["num_classes"], e.calibration_bins, e.roc_thresholds)
    folder = Path(e.output_dir)
    trainer = build_eval_trainer(cfg, folder)
    trainer.test(evaluator, datamodule=OneSplit(run.datamodule, e.split), verbose=False)
    if not trainer.is_global_zero:
        return None
    meta = {"run_dir": e.run_dir, "checkpoint": e.checkpoint, "split": e.split, "world_size": trainer.world_size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "overrides": list(e.overrides)}
    return write_report(folder, evaluator.results, class_names, meta)
