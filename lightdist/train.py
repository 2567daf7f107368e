"""Build everything from a resolved config and run fit then test. No Hydra decorators here:
rank 0 calls this from the Hydra job, ranks > 0 started by Lightning call it from the
saved config, and tests may call it directly."""

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from omegaconf import DictConfig, OmegaConf

from lightdist import run_dir as rd
from lightdist.callbacks.continuity import RunContinuity
from lightdist.callbacks.divergence import Diverged
from lightdist.callbacks.loader_state import LoaderState
from lightdist.callbacks.model_options import model_options
from lightdist.callbacks.model_state import ModelStateSize
from lightdist.callbacks.preemption import PreemptionHandler
from lightdist.callbacks.progress import LogProgress
from lightdist.callbacks.rng_state import RNGState
from lightdist.callbacks.timing import StepClock
from lightdist.checkpoints import AtomicCheckpointIO, load_consolidated, resolve_ckpt_path
from lightdist.cuda_check import answer_cuda_checks_once
from lightdist.distributed.launch import watch_ranks
from lightdist.distributed.preemption import Preempted
from lightdist.distributed.ranks import processes_per_node
from lightdist.distributed.sharding import check_module, needs_consolidated_weights
from lightdist.distributed.strategy import build_strategy, trainer_arguments
from lightdist.distributed.threads import configure_threads
from lightdist.loggers import finish_wandb
from lightdist.runs import build_datamodule, build_task, without_pretrained
from lightdist.tasks.transfer import pretrained_statistics
from lightdist.unused_hooks import skip_unused_hooks

log = logging.getLogger(__name__)

class _NoAdvertising(logging.Filter):
    """Lightning (>= 2.6) advertises its cloud services (litlogger, litmodels) when a Trainer is built."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("\N{ELECTRIC LIGHT BULB} Tip:")


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_NoAdvertising())


def composed_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """Transfer learning, distillation and the model's speed options: top-level config nodes that
    compose onto any task as callbacks, rather than constructor arguments every task would repeat."""
    callbacks = list(instantiate(cfg.transfer)) if cfg.get("transfer") else []
    distill = instantiate(cfg.distill) if cfg.get("distill") else None  # built to check its values
    if distill is not None and distill.teacher_source:
        callbacks.append(distill)
    return callbacks + model_options(cfg)  # last: compiles the model the others have set up


def build_callbacks(cfg: DictConfig, has_logger: bool) -> list[L.Callback]:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    callbacks += composed_callbacks(cfg)
    # Not optional: resumed runs must not duplicate logged steps; the summary reports start-up time.
    callbacks += [RunContinuity(), StepClock(), ModelStateSize()]
    if cfg.get("exact_resume", True):  # before the preemption handler: it restores the generators first
        callbacks += [LoaderState(), RNGState()]
    if cfg.get("preemption"):
        callbacks.append(PreemptionHandler.from_config(cfg.preemption))
    trial = cfg.get("search_trial") or {}
    if trial.get("trial_id") is not None:  # an Optuna trial launched with a pruner
        from lightdist.callbacks.optuna_pruning import OptunaPruning

        callbacks.append(OptunaPruning(trial.storage, trial.study, int(trial.trial_id), cfg.optimized_metric))
    # Callbacks that only make sense with what was switched off are dropped rather than refused.
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    elif sum(isinstance(c, ProgressBar) for c in callbacks) > 1:
        # A live bar needs a terminal; in a file or a pipe (SLURM, CI) progress comes as lines.
        lines = not sys.stdout.isatty()
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar) or isinstance(c, LogProgress) == lines]
    if not has_logger:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks


def build_loggers(cfg: DictConfig) -> list:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]


def build_trainer(cfg: DictConfig, run_dir: Path) -> L.Trainer:
    loggers = build_loggers(cfg)
    strategy = build_strategy(cfg.get("strategy"), cfg.trainer, (cfg.get("data") or {}).get("batch_size"),
                              timeout_s=(cfg.get("distributed") or {}).get("timeout_s"), compile=cfg.get("compile"))
    return instantiate(
        cfg.trainer,
        # AtomicCheckpointIO: a process killed while writing a checkpoint leaves the previous one whole
        **trainer_arguments(cfg, strategy, AtomicCheckpointIO()),
        callbacks=build_callbacks(cfg, has_logger=bool(loggers)),
        logger=loggers if loggers else False,
        default_root_dir=str(run_dir),
    )


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float, torch.Tensor))}


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _next_commands(task: L.LightningModule, facts: dict[str, Any], run_dir: Path, best: str) -> list[str]:
    """What to run on this run next (lightdist eval and predict take classification runs)."""
    from lightdist.tasks.classification import ClassificationTask

    if not isinstance(task, ClassificationTask):
        return []
    where = f"run_dir={rd.shown_path(run_dir)}" + ("" if best else " ckpt=last")
    example = "text='...'" if "vocab_size" in facts else "image=<file>"
    return [f"lightdist eval {where}", f"lightdist predict {where} {example}"]


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train (and test) what `cfg` describes; returns the summary (rank 0 also writes it).

    A diverged run raises Diverged after its summary is written (rank 0; the other ranks exit
    with the same code, silently), except in a multirun, where the sweep goes on.
    """
    started = time.time()
    threads = configure_threads(cfg.threads_per_rank, processes_per_node(cfg.trainer))
    answer_cuda_checks_once()
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(cfg.matmul_precision)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = build_datamodule(cfg)
    if hasattr(datamodule, "exact_resume"):  # resumable training loaders (lightdist.data.resumable)
        datamodule.exact_resume = bool(cfg.get("exact_resume", True))
    facts = datamodule.facts()
    if facts.get("plan"):  # settings a data planner chose from the training split (+experiment=text_auto)
        log.info("text_auto plan: %s (trainer.max_epochs is the plan's: data.planner.min_epochs/max_epochs "
                 "bound it)", json.dumps(facts["plan"], sort_keys=True))
        cfg = OmegaConf.merge(cfg, {"trainer": facts["plan"].get("trainer", {})})
    task = build_task(cfg, facts)
    # A pretrained backbone's normalisation, for a data module that takes it (it decides: data.normalize=auto).
    stats = pretrained_statistics(getattr(task, "model", task))
    if stats and hasattr(datamodule, "use_statistics") and datamodule.use_statistics(*stats):
        log.info("normalising with the pretrained backbone's statistics (mean %s, std %s)", *stats)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
    trainer = build_trainer(cfg, run_dir)
    if trainer.precision == "64-true":
        # Lightning converts the task after restoring a checkpoint: float32 parameters would round its weights.
        task = task.double()
    watch_ranks(trainer, run_dir)  # a rank > 0 that dies is named in one line
    check_module(trainer.strategy, task)
    skip_unused_hooks(task, trainer.callbacks)  # host time per step (lightdist.unused_hooks)
    if trainer.is_global_zero:
        hparams = OmegaConf.to_container(cfg, resolve=True)
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)

    try:
        preempted, diverged = False, None
        try:
            # weights_only: checkpoints are data (resolve_ckpt_path verified it), whatever TORCH_FORCE_* says
            trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except Preempted as exc:
            log.info(str(exc))
            preempted = True
        except Diverged as exc:  # every rank, same step; fit is interrupted, so no test below
            diverged = exc
        validation = _metrics({k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        test_metrics: dict[str, float] = {}
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
        if cfg.get("test_after_fit", True) and not trainer.interrupted and not preempted:
            import shutil

            from lightning.pytorch.strategies import (
                DeepSpeedStrategy,
                FSDPStrategy,
                ModelParallelStrategy,
            )

            from lightdist.checkpoints import CHECKPOINT_DIR

            # The best checkpoint is loaded into a freshly built task: sharded strategies (FSDP,
            # FSDP2, DeepSpeed) wrap the module again for evaluation, which a module already sharded by fit
            # breaks. A sharded run that ended before its first best checkpoint saves its final
            # weights now (every rank its shard), to be tested the same way and removed afterwards.
            final = ""
            if not best and isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)):
                final = str(run_dir / CHECKPOINT_DIR / "final-weights.ckpt")
                trainer.save_checkpoint(final, weights_only=True)
            tested = best or final
            # rebuilt for the checkpoint's weights: a pretrained backbone is not read (or downloaded) again
            test_task, test_ckpt = (build_task(without_pretrained(cfg), facts), tested) if tested else (task, None)
            if tested and needs_consolidated_weights(trainer.strategy):
                test_task.load_state_dict(load_consolidated(tested)["state_dict"])
                test_ckpt = None
            results = trainer.test(test_task, datamodule=datamodule, ckpt_path=test_ckpt, verbose=False,
                                   weights_only=True)
            test_metrics = _metrics(results[0]) if results else {}
            if final:
                trainer.strategy.barrier()  # every rank has loaded it
                if trainer.is_global_zero and Path(final).is_dir():
                    shutil.rmtree(final)
                elif trainer.is_global_zero:
                    Path(final).unlink(missing_ok=True)
        clock = next(c for c in trainer.callbacks if isinstance(c, StepClock))
        summary = {
            "name": cfg.get("name"),
            "run_dir": str(run_dir),
            "test": test_metrics,
            "validation": validation,
            "best_checkpoint": best or None,
            "best_score": float(checkpoint.best_model_score) if best and checkpoint.best_model_score is not None
            else None,
            "monitor": checkpoint.monitor if isinstance(checkpoint, ModelCheckpoint) else None,
            "global_step": trainer.global_step,
            "epochs": trainer.current_epoch,
            "world_size": trainer.world_size,
            "threads_per_rank": threads,
            "interrupted": trainer.interrupted and diverged is None,
            "diverged": diverged.record() if diverged else None,
            "preempted": preempted,
            "pruned": any(getattr(c, "pruned_at_step", None) is not None for c in trainer.callbacks),
            "wall_time_s": round(time.time() - started, 2),
            "first_step_at": clock.first_at,
            "train_steps_per_s": clock.steps_per_second(),
            "model_state_bytes_per_rank": next(
                (c.per_rank for c in trainer.callbacks if isinstance(c, ModelStateSize)), None),
        }
        if torch.cuda.is_available():
            summary["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated()
        if trainer.is_global_zero:
            rd.write_json(run_dir / rd.SUMMARY_FILE, summary)
            if diverged is None:
                print(rd.describe(summary, _next_commands(task, facts, run_dir, best)), flush=True)
        summary["callback_metrics"] = _metrics(trainer.callback_metrics)
        if diverged is not None:
            if _in_multirun():
                log.warning(str(diverged))
            elif trainer.is_global_zero:
                raise diverged
            else:
                raise SystemExit(diverged.exit_code)  # rank 0 alone prints the one line
        return summary
    finally:
        if trainer.is_global_zero:
            finish_wandb()
