"""`lightdist [train] <hydra overrides and flags>`: training, a Hydra app.

Before Hydra creates any directory the config is composed and checked once (preflight), so
a typo ends in one line naming the fix and leaves nothing behind. Errors inside a job are
carried out of the app to lightdist.main, which reports them.
"""

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightdist.config import config_dir
from lightdist.config.checks import check_config, preflight, unswept_folds
from lightdist.config.compose import flag_value, split_args, with_run_overrides
from lightdist.distributed import early_ranks
from lightdist.distributed.launch import announce_job_config, isolated_job, rank_failure, rank_log
from lightdist.distributed.ranks import is_rank_zero
from lightdist.errors import JobFailed, LightdistError
from lightdist.sweeps import FOLD_KEY

# Flags that compose nothing to run (help, info, another config source): no preflight.
_NO_PREFLIGHT = {"-h", "--help", "--hydra-help", "--version", "-i", "--info", "-sc", "--shell-completion",
                 "-cp", "--config-path", "-cd", "--config-dir", "--experimental-rerun", "-c", "--cfg"}


def run(argv: list[str]) -> None:
    flags, overrides = split_args(argv)
    overrides = with_run_overrides(overrides)  # resuming in run_dir=<run>: that run's own config first
    config_name = flag_value(flags, "-cn", "--config-name") or "config"

    def start_ranks(composed) -> None:  # a single-node run's ranks > 0: their imports overlap the checks'
        early_ranks.start(composed, [*flags, *(["--multirun"] if unswept_folds(composed, overrides) else [])])

    cfg = None if any(f in _NO_PREFLIGHT for f in flags) else preflight(overrides, config_name, composed=start_ranks)
    folds = unswept_folds(cfg, overrides)
    if folds:  # data.kfold.k alone: every fold is one job of a multirun
        overrides.append(f"{FOLD_KEY}={','.join(map(str, range(folds)))}")
        if "-m" not in flags and "--multirun" not in flags:
            flags.append("--multirun")
    if not is_rank_zero():
        # Ranks > 0 started by srun/torchrun compose the same config and run directory but
        # write nothing there: no .hydra/ copy, no log file.
        overrides += ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    sys.argv = [sys.argv[0], *flags, *overrides]
    with _hydra_reraises():
        _hydra_app(config_name)()


@contextlib.contextmanager
def _hydra_reraises() -> Iterator[None]:
    """Hydra raises what it would otherwise print as its own report (and exit 1): main() reports it."""
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


def _hydra_app(config_name: str):
    import hydra

    from hydra_plugins.lightdist_sweepers import register

    register()  # hydra/sweeper=optuna, also where Hydra's plugin scan cannot see it (pip install -e .)

    @hydra.main(version_base="1.3", config_path=config_dir(), config_name=config_name)
    def app(cfg) -> Any:
        try:
            return run_job(cfg)
        except LightdistError as exc:  # the user's to fix: it ends a sweep as it ends a run
            raise JobFailed(exc) from None
        except Exception as exc:
            if _in_multirun():  # the sweeper's to handle: a failed trial, or raised after the batch
                raise
            raise JobFailed(exc) from None

    return app


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_job(cfg) -> Any:
    """One Hydra job (a run, or one point of a multirun) on the rank(s) that composed it."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from lightdist import run_dir as rd
    from lightdist import train
    from lightdist.callbacks.divergence import Diverged
    from lightdist.config.groups import adapt_job
    from lightdist.distributed.preemption import requeue_slurm_job

    with isolated_job():
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        adapt_job(cfg)  # group switches on top of an experiment, as the preflight saw them
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        check_config(cfg, run_dir)
        if is_rank_zero():
            _log_libraries_to_job_file()
            announce_job_config(rd.save_config(run_dir, cfg))
            rd.start_segment(run_dir, world_size=_world_size(cfg))
        status, summary = "failed", None
        try:
            summary = train.run(cfg, run_dir)
            status = ("diverged" if summary.get("diverged") else "requeued" if summary["preempted"]
                      else "interrupted" if summary["interrupted"] else "completed")
        except Diverged:  # a single run; in a multirun the summary says so and the sweep goes on
            status = "diverged"
            raise
        except SystemExit:  # Lightning's SIGTERM exit: preempted, or requeued by SLURM
            status = "terminated"
            raise
        except Exception as exc:  # a rank that died shows here as gloo/NCCL's error in a collective
            instead = None if isinstance(exc, LightdistError) else rank_failure(exc, run_dir)
            if instead is not None:
                raise instead from exc
            raise
        finally:
            if is_rank_zero():
                rd.end_segment(run_dir, status=status, global_step=summary["global_step"] if summary else None)
        if status == "requeued" and is_rank_zero() and cfg.get("preemption", {}).get("requeue", True):
            requeue_slurm_job()  # last: the requeue terminates this job's processes
        metric = cfg.get("optimized_metric")
        if not metric or status == "diverged":  # a diverged trial has no value (the sweeper fails it)
            return None
        from lightdist.sweeps.summary import objective

        best = objective(summary, metric)
        return best if best is not None else summary["callback_metrics"].get(metric)


def _log_libraries_to_job_file() -> None:
    """Hydra's job log file (train.log) only hears the root logger; Lightning logs on its own loggers."""
    import logging

    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for name in ("lightning.pytorch", "lightning.fabric"):
        lib = logging.getLogger(name)
        for handler in files:
            if handler not in lib.handlers:
                lib.addHandler(handler)


def _world_size(cfg) -> int:
    from lightdist.distributed.ranks import processes_per_node

    return processes_per_node(cfg.trainer) * int(cfg.trainer.get("num_nodes", 1))


def prepare_child() -> None:
    """What a rank > 0 imports before it runs its job: a rank started early imports it while waiting."""
    from lightdist import run_dir, train  # noqa: F401  (Lightning, torch and the shared layers with them)
    from lightdist.distributed import strategy  # noqa: F401


def run_child(config_path: Path) -> None:
    """A rank > 0 started by Lightning's launcher: run rank 0's job from its resolved config.

    The job is training, or an evaluation when the config holds an `eval` node (`lightdist eval`).
    """
    from lightdist import run_dir as rd
    from lightdist import train
    from lightdist.distributed.strategy import exit_rank, release_process_group_at_exit

    release_process_group_at_exit()  # any strategy: its process group must not outlive the interpreter
    cfg = rd.load_config(config_path)
    _log_to_rank_file(cfg)
    if "eval" in cfg:
        from lightdist.evaluation.job import evaluate

        evaluate(cfg)
    else:
        train.run(cfg, Path(cfg.paths.output_dir))
    exit_rank(0)  # no interpreter finalization for C++ threads to abort in (see exit_rank)


def _log_to_rank_file(cfg) -> None:
    """This rank's own log in the run directory (named when the rank dies): its library logs and its errors."""
    import logging

    from lightdist.distributed.ranks import processes_per_node

    rank = int(os.environ.get("NODE_RANK", 0)) * processes_per_node(cfg.trainer) + int(os.environ["LOCAL_RANK"])
    handler = logging.FileHandler(rank_log(cfg.paths.output_dir, rank))
    handler.setFormatter(logging.Formatter(f"[%(asctime)s][rank {rank}][%(name)s][%(levelname)s] %(message)s"))
    logging.getLogger().setLevel(logging.INFO)
    for name in ("", "lightning.pytorch", "lightning.fabric"):  # Lightning's loggers do not propagate
        logging.getLogger(name).addHandler(handler)
    excepthook = sys.excepthook

    def log_then_print(kind, value, tb):
        logging.getLogger("lightdist").error("rank %d failed", rank, exc_info=(kind, value, tb))
        excepthook(kind, value, tb)

    sys.excepthook = log_then_print
