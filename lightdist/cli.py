"""The command line: `lightdist [command] [hydra overrides]` and `python -m lightdist`.

    lightdist +experiment=fashion_mnist_cnn trainer=cpu_ddp      # train (the default command)
    lightdist preflight +experiment=cifar_resnet trainer=gpu     # compose and check, run nothing
    lightdist predict run_dir=outputs/<name>/<run> text="..."    # labels and probabilities (JSON lines)
    lightdist eval run_dir=outputs/<name>/<run> split=test       # report: metrics, ROC, calibration
    lightdist optimize run_dir=outputs/<name>/<run>              # prune, int8-quantize, export; measured

Training is a Hydra app; before Hydra creates any directory the config is composed and
checked once (preflight), so a typo ends in one line naming the fix and leaves nothing
behind.
"""

import difflib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightdist.config import config_dir, resolvers
from lightdist.distributed.launch import (
    announce_job_config,
    child_job_config,
    isolated_job,
    rank_failure,
    rank_log,
)
from lightdist.distributed.ranks import is_rank_zero
from lightdist.errors import ConfigError, LightdistError, error_line, one_line
from lightdist.sweeps import FOLD_KEY

# Hydra flags followed by a value (the rest are switches or `key=value` overrides).
_VALUE_FLAGS = {"-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name",
                "-cd", "--config-dir", "-i", "--info", "-sc", "--shell-completion", "--experimental-rerun"}
_NO_PREFLIGHT = {"-h", "--help", "--hydra-help", "--version", "-i", "--info", "-sc", "--shell-completion",
                 "-cp", "--config-path", "-cd", "--config-dir", "--experimental-rerun"}


def _fail(message: str, code: int = 2) -> None:
    print(error_line(message), file=sys.stderr)
    raise SystemExit(code)


def _user_error(exc: BaseException) -> str | None:
    """The one-line message for errors caused by what the user asked for; None for bugs."""
    if isinstance(exc, LightdistError):
        return str(exc)
    from hydra.errors import HydraException, InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    if "lightning" in sys.modules:
        from lightning.fabric.utilities.exceptions import MisconfigurationException
    else:  # nothing of Lightning ran yet, so none of its errors can be here (and importing it costs seconds)
        MisconfigurationException = LightdistError
    if isinstance(exc, InstantiationException):
        from lightdist.config.building import explain

        return str(explain(exc))  # names the node (full_key), its target and the key to check
    if isinstance(exc, MisconfigurationException):
        return str(exc).strip().splitlines()[0]
    if isinstance(exc, (HydraException, OmegaConfBaseException)):
        return one_line(exc)
    return None


def guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """Run fn; errors the user can fix become one line and exit 2, bugs keep their traceback."""
    try:
        return fn(*args)
    except Exception as exc:
        message = _user_error(exc)
        if message is None or os.environ.get("LIGHTDIST_DEBUG"):
            raise
        ours = isinstance(exc, LightdistError) or isinstance(exc.__cause__, LightdistError)
        _fail(message if ours else message + "  [set LIGHTDIST_DEBUG=1 for the traceback]",
              getattr(exc, "exit_code", 2))


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(hydra flags with their values, overrides)."""
    flags, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            flags.append(arg)
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if arg in _VALUE_FLAGS and nxt is not None and not nxt.startswith("-") and "=" not in nxt:
                flags.append(nxt)
                i += 1
        else:
            overrides.append(arg)
        i += 1
    return flags, overrides


def _flag_value(flags: list[str], *names: str) -> str | None:
    for i, flag in enumerate(flags):
        if flag in names and i + 1 < len(flags):
            return flags[i + 1]
    return None


# -- preflight: compose and check before anything is created ------------------------------------
def _first_point(overrides: list[str]) -> list[str]:
    """One point of a sweep (each sweep override at its first value), to check before running it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    point = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            try:
                value = next(iter(override.sweep_string_iterator()))
            except Exception:  # interval sweeps (Optuna) have no first value: checked per trial
                continue
            point.append(f"{override.get_key_element()}={value}")
        else:
            point.append(override.input_line)
    return point


def compose(overrides: list[str], config_name: str = "config", notes: list | None = None):
    """The config a job with these overrides runs, adapted to its group choices as the job adapts it
    (lightdist.config.groups); what was adapted is appended to `notes` as (log level, message)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lightdist.config.groups import adapt_composed

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    return adapt_composed(cfg, config_name, notes)


def compose_checked(overrides: list[str], config_name: str = "config", notes: list | None = None):
    """compose(), with Hydra's composition errors (an unknown group option, a bad override) as one ConfigError."""
    from hydra.errors import ConfigCompositionException, MissingConfigException

    try:
        return compose(overrides, config_name, notes)
    except MissingConfigException as exc:
        raise ConfigError(_explain_missing_config(exc)) from exc
    except ConfigCompositionException as exc:
        cause = exc.__cause__
        if isinstance(cause, MissingConfigException):
            raise ConfigError(_explain_missing_config(cause)) from exc
        unknown = _unknown_override(cause)
        if unknown is not None:
            raise unknown from exc
        detail = f"({str(cause).splitlines()[0]})" if cause is not None else ""
        raise ConfigError(" ".join([*str(exc).split(), detail]).strip()) from exc


def _unknown_override(cause) -> ConfigError | None:
    """`a.b=1` for a key `b` that node `a` lacks: the valid keys there and the nearest one.

    A key the node's target accepts but the config leaves out is not unknown: Hydra's own
    message (add it with `+a.b=1`) says the fix.
    """
    from omegaconf import DictConfig
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    from lightdist.config.validate import signature_of, unknown_key

    parent = getattr(cause, "parent_node", None)
    if not isinstance(cause, (ConfigAttributeError, ConfigKeyError)) or not isinstance(parent, DictConfig) \
            or not getattr(cause, "full_key", None):
        return None
    valid = set(parent.keys()) - {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
    target = parent._get_node("_target_")._value() if "_target_" in parent else None
    if target:
        params, _, _ = signature_of(str(target))
        if cause.key in params:
            return None
        valid |= set(params)  # the rest can be added with `+`
    return unknown_key(str(cause.full_key), valid)


def _explain_missing_config(exc) -> str:
    group = os.path.dirname(exc.missing_cfg_file) if exc.missing_cfg_file else ""
    name = os.path.basename(exc.missing_cfg_file or "")
    if group:
        options = ", ".join(exc.options or []) or "none"
        return f"unknown {group} '{name}'; available: {options}"
    return str(exc).splitlines()[0]


def check_config(cfg, run_dir: Path | None = None, allocation: dict | None = None) -> None:
    """Everything that can be known wrong about a composed config without running it.

    `allocation` (gpus, cores, tasks_per_node, nodes) describes the machines of a job to be
    submitted; by default the devices are checked against this machine.
    """

    from lightdist.checkpoints import resolve_ckpt_path
    from lightdist.config.validate import check_devices, check_precision, check_targets
    from lightdist.tasks.transfer import check_sources

    missing = missing_keys(cfg)
    if missing:
        raise ConfigError(f"missing required value(s): {', '.join(missing)}",
                          hint=" ".join(f"{key}=<value>" for key in missing))
    check_targets(cfg)
    check_sources(cfg.get("task"))
    check_devices(cfg.trainer, **(allocation or {}))
    check_precision(cfg.trainer, cfg.get("strategy"))
    resolve_ckpt_path(cfg.get("ckpt_path"), run_dir or planned_run_dir(cfg))


def missing_keys(node, path: str = "") -> list[str]:
    """Keys left at `???` or `${lightdist.required:...}` (a value the user must give), found without
    resolving interpolations."""
    from omegaconf import DictConfig, ListConfig

    found = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            child = node._get_node(key)
            where = f"{path}.{key}" if path else str(key)
            if child is None:
                continue
            if child._is_interpolation():
                if str(child._value()).startswith("${lightdist.required:"):
                    found.append(where)
                continue
            if child._is_missing():
                found.append(where)
            elif isinstance(child, (DictConfig, ListConfig)):
                found += missing_keys(child, where)
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            found += missing_keys(node._get_node(i), f"{path}[{i}]")
    return found


def planned_run_dir(cfg) -> Path:
    """Before Hydra runs: where this run's directory will be."""
    from omegaconf import OmegaConf

    return Path(resolvers.run_dir(cfg.get("run_dir"), f"{OmegaConf.select(cfg, 'paths.log_dir')}/{cfg.name}"))


def check_wiring(cfg) -> None:
    """The model and the task get every argument they need: from their config or from the data's facts.

    Catches pairings that cannot work (an image task on an environment, a Q-network on
    images) before anything is built.
    """
    from hydra.utils import get_class

    from lightdist.config.validate import signature_of
    from lightdist.errors import ConfigError

    facts = set(getattr(get_class(cfg.data._target_), "FACTS", ()) or ())
    if not facts:
        return
    injected = {"model", "optimizer", "scheduler"}
    for group in ("model", "task"):
        node = cfg.get(group)
        if not node or "_target_" not in node:
            continue
        params, _, _ = signature_of(node._target_)
        missing = [name for name, p in params.items() if p.default is p.empty and name not in node
                   and name not in facts and not (group == "task" and name in injected)]
        if missing:
            raise ConfigError(
                f"{group} {node._target_.rsplit('.', 1)[-1]} needs {', '.join(missing)}, which neither its "
                f"config nor data {cfg.data._target_.rsplit('.', 1)[-1]} (facts: {', '.join(sorted(facts))}) provides",
                hint="pick a model/task that fits the data, e.g. with an experiment (+experiment=...)")
    # A model whose every argument has a default (an image CNN) still has to read these inputs:
    # it takes at least one of the facts that describe them (not the labels, which any model has).
    inputs = sorted(facts - _LABEL_FACTS)
    model = cfg.get("model")
    if inputs and model and "_target_" in model and not set(signature_of(model._target_)[0]) & set(inputs):
        raise ConfigError(
            f"model {model._target_.rsplit('.', 1)[-1]} is not built for the inputs of data "
            f"{cfg.data._target_.rsplit('.', 1)[-1]}: it takes none of {', '.join(inputs)}",
            hint="pick a model/task that fits the data, e.g. with an experiment (+experiment=...)")


# Facts about the labels (or actions), which models of any kind of input take.
_LABEL_FACTS = {"num_classes", "class_names", "num_actions"}


def _outside_job(cfg):
    """A copy of cfg that resolves before Hydra runs: ${hydra:runtime.output_dir} becomes the planned run dir."""
    import copy

    cfg = copy.deepcopy(cfg)
    cfg.paths.output_dir = str(planned_run_dir(cfg))
    return cfg


def check_data(cfg):
    """The dataset is there (or downloadable) and its splits fit: building the data module finds out.

    Returns the data module."""
    from hydra.utils import instantiate

    from lightdist.config.building import building

    cfg = _outside_job(cfg)
    with building("data", cfg.data):
        datamodule = instantiate(cfg.data)
        datamodule.check_available()
    return datamodule


# Optimizers built on a probe before the run: torch's and lightdist's are cheap to build anywhere
# (others may compile kernels or need a GPU: those are built by the run only).
_PROBED_OPTIMIZERS = ("torch.optim.", "lightdist.")


def check_builds(cfg, datamodule=None) -> None:
    """Build what the run builds from the config and is cheap to build, so that a refused value
    (optimizer.lr=-1, a scheduler's factor) ends here, before any run directory exists.

    The optimizer is built on a one-layer probe and the scheduler on that optimizer; every
    callback and logger is built as configured. The model needs the data's facts: it is built
    when the data module says they are cheap (PREFLIGHT_FACTS); else, as for the task, its
    arguments are checked by check_wiring only.
    """
    import torch
    from hydra.utils import instantiate

    from lightdist.config.building import building
    from lightdist.tasks.optim import build_optimizer

    cfg = _outside_job(cfg)
    if datamodule is not None and getattr(datamodule, "PREFLIGHT_FACTS", False) and cfg.get("model"):
        from lightdist.train import instantiate_with_facts

        instantiate_with_facts(cfg.model, datamodule.facts())
    for group in ("callbacks", "logger"):
        for name, node in (cfg.get(group) or {}).items():
            if not node:
                continue
            if "_target_" not in node:
                raise ConfigError(f"{group}.{name} has no _target_: {node}",
                                  hint=f"give {group}.{name}._target_ (a class), or drop it with {group}.{name}=null")
            with building(f"{group}.{name}", node):
                instantiate(node)
    with building("optimizer", cfg.optimizer):
        factory = instantiate(cfg.optimizer)
    if not str(cfg.optimizer._target_).startswith(_PROBED_OPTIMIZERS):
        return
    optimizer = build_optimizer(factory, torch.nn.Linear(1, 1))
    if cfg.get("scheduler"):
        with building("scheduler", cfg.scheduler):
            instantiate(cfg.scheduler)(optimizer, total_steps=100, steps_per_epoch=10)


def preflight(overrides: list[str], config_name: str = "config", with_data: bool = True,
              allocation: dict | None = None, notes: list | None = None):
    point = _first_point(overrides)
    cfg = compose_checked(point, config_name, notes)
    base = compose([], config_name)
    unknown = sorted(set(cfg.keys()) - set(base.keys()))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(base.keys()), n=1)
        raise ConfigError(f"unknown top-level key(s): {', '.join(unknown)}"
                          + (f"; did you mean {close[0]}?" if close else ""),
                          hint=f"top-level keys: {', '.join(sorted(base.keys()))}")
    # data.kfold.k alone becomes one job per fold: check the first of them.
    checked = compose([*point, f"{FOLD_KEY}=0"], config_name) if _unswept_folds(cfg, point) else cfg
    check_config(checked, allocation=allocation)
    check_wiring(checked)
    datamodule = check_data(checked) if with_data else None
    check_builds(checked, datamodule)
    return cfg


# -- the Hydra job ----------------------------------------------------------------------------------
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
    from lightdist.distributed.strategy import processes_per_node

    return processes_per_node(cfg.trainer) * int(cfg.trainer.get("num_nodes", 1))


def _hydra_app(config_name: str):
    import hydra

    @hydra.main(version_base="1.3", config_path=config_dir(), config_name=config_name)
    def app(cfg) -> Any:
        return guarded(run_job, cfg)

    return app


def train_command(argv: list[str]) -> None:
    flags, overrides = split_args(argv)
    config_name = _flag_value(flags, "-cn", "--config-name") or "config"
    checked = not any(f in _NO_PREFLIGHT for f in flags) and "--cfg" not in flags and "-c" not in flags
    cfg = guarded(preflight, overrides, config_name) if checked else None
    folds = _unswept_folds(cfg, overrides)
    if folds:  # data.kfold.k alone: every fold is one job of a multirun
        overrides.append(f"{FOLD_KEY}={','.join(map(str, range(folds)))}")
        if "-m" not in flags and "--multirun" not in flags:
            flags.append("--multirun")
    if not is_rank_zero():
        # Ranks > 0 started by srun/torchrun compose the same config and run directory but
        # write nothing there: no .hydra/ copy, no log file.
        overrides += ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    sys.argv = [sys.argv[0], *flags, *overrides]
    _hydra_app(config_name)()


def _unswept_folds(cfg, overrides: list[str]) -> int:
    """k when k-fold is on and no fold is chosen (nor swept), else 0."""
    if any(o.lstrip("+~").startswith(f"{FOLD_KEY}=") for o in overrides):
        return 0
    if cfg is None:
        return 0
    kfold = cfg.data.get("kfold") or {}
    return int(kfold["k"]) if kfold.get("k") is not None and kfold.get("fold") is None else 0


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
        from lightdist.evaluation.command import evaluate

        evaluate(cfg)
    else:
        train.run(cfg, Path(cfg.paths.output_dir))
    exit_rank(0)  # no interpreter finalization for C++ threads to abort in (see exit_rank)


def _log_to_rank_file(cfg) -> None:
    """This rank's own log in the run directory (named when the rank dies): its library logs and its errors."""
    import logging

    from lightdist.distributed.strategy import processes_per_node

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


def preflight_command(argv: list[str]) -> None:
    """Compose and check a run without starting it; with --gpus-per-node etc., for another machine."""
    import argparse

    parser = argparse.ArgumentParser(prog="lightdist preflight",
                                     description="Compose the config and check it (and the dataset) without running.")
    parser.add_argument("--gpus-per-node", type=int, help="GPUs per node of the job to be submitted")
    parser.add_argument("--cpus-per-node", type=int, help="cores per node of the job to be submitted")
    parser.add_argument("--tasks-per-node", type=int, help="tasks (ranks) per node of the job")
    parser.add_argument("--nodes", type=int, help="nodes of the job")
    args, rest = parser.parse_known_args(argv)
    flags, overrides = split_args([a for a in rest if a != "--"])
    allocation = {"gpus": args.gpus_per_node, "cores": args.cpus_per_node, "tasks_per_node": args.tasks_per_node,
                  "nodes": args.nodes}
    allocation = {k: v for k, v in allocation.items() if v is not None} or None
    config_name = _flag_value(flags, "-cn", "--config-name") or "config"
    points = guarded(sweep_points, overrides)  # a sweep: every point must pass
    for point in points:
        notes: list = []
        cfg = guarded(preflight, point, config_name, True, allocation, notes)
        for _, note in notes:
            print(f"note: {note}")
        data = cfg.data.get("dataset") or cfg.data._target_.rsplit(".", 1)[-1]
        print(f"ok: {' '.join(point) or '(defaults)'}: data={data} model={cfg.model._target_.rsplit('.', 1)[-1]} "
              f"trainer.accelerator={cfg.trainer.accelerator} devices={cfg.trainer.devices} "
              f"num_nodes={cfg.trainer.num_nodes} precision={cfg.trainer.precision}")


def convert_command(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="lightdist convert",
        description="Consolidate a checkpoint (a file, an FSDP sharded directory or a DeepSpeed ZeRO directory) "
                    "into one file with the full model weights, loadable on one device.")
    parser.add_argument("checkpoint", help="checkpoint file or sharded checkpoint directory")
    parser.add_argument("-o", "--output", help="output file (default: <checkpoint>.consolidated.ckpt)")
    args = parser.parse_args(argv)
    from lightdist.checkpoints import consolidate

    print(guarded(consolidate, args.checkpoint, args.output))


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """Every point of a Hydra sweep, in the order Hydra's basic sweeper runs them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [point for batch in BasicSweeper.split_arguments(parsed, None) for point in batch]


def sweep_command(argv: list[str]) -> None:
    """Point i of a sweep as its own run: what each task of a SLURM job array runs."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="lightdist sweep",
        description="Run one point of a Hydra sweep (key=a,b ...), or count/list the points. "
                    "Each point is a normal run with its own run directory.")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--index", type=int, help="run the point with this index (0-based)")
    what.add_argument("--count", action="store_true", help="print the number of points")
    what.add_argument("--list", action="store_true", help="print each point's overrides")
    what.add_argument("--summarize", metavar="DIR",
                      help="write sweep_summary.csv/.md for the runs in DIR (e.g. a SLURM array sweep's)")
    args, overrides = parser.parse_known_args(argv)
    overrides = [o for o in overrides if o != "--"]
    if args.summarize:
        guarded(summarize_runs, args.summarize, overrides)
        return
    points = guarded(sweep_points, overrides)
    if args.count:
        print(len(points))
    elif args.list:
        for i, point in enumerate(points):
            print(i, " ".join(point))
    elif not 0 <= args.index < len(points):
        _fail(f"sweep point {args.index} does not exist: the sweep has {len(points)} point(s) (0-{len(points) - 1})")
    else:
        train_command(points[args.index])


def summarize_runs(folder: str, overrides: list[str]) -> None:
    """The sweep summary of the runs under `folder`, ranked by the optimized metric of their config."""
    from lightdist.sweeps import summary

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory", hint="pass the folder that holds the sweep's run directories")
    cfg = compose(overrides)
    written = summary.write(path, cfg.optimized_metric, cfg.monitor.mode)
    if written is None:
        raise ConfigError(f"no run directories under {path}", hint="pass the folder that holds the runs")
    print(written[1].read_text(), end="")


def predict_command(argv: list[str]) -> None:
    from lightdist.predict import predict_command as run

    run(argv)


def eval_command(argv: list[str]) -> None:
    from lightdist.evaluation.command import eval_command as run

    run(argv)


def optimize_command(argv: list[str]) -> None:
    from lightdist.optimize.command import optimize_command as run

    run(argv)


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "train": train_command,
    "preflight": preflight_command,
    "convert": convert_command,
    "sweep": sweep_command,
    "predict": predict_command,
    "eval": eval_command,
    "optimize": optimize_command,
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    resolvers.register()
    child = child_job_config()
    if child is not None:
        guarded(run_child, child)
        return
    if argv and argv[0] in COMMANDS:
        COMMANDS[argv[0]](argv[1:])
    else:
        train_command(argv)
    _exit_if_distributed()


def _exit_if_distributed() -> None:
    """A process that ran a process group (rank 0 of a job, or a rank started by srun/torchrun)
    ends as Lightning's children do (exit_rank): the group's C++ threads may outlive it, and
    interpreter finalization could abort in one of them."""
    from lightdist.distributed import launch

    dist = sys.modules.get("torch.distributed")
    if launch.ran_process_group or (dist is not None and dist.is_available() and dist.is_initialized()):
        from lightdist.distributed.strategy import exit_rank

        exit_rank(0)


if __name__ == "__main__":
    main()
