"""Preflight checks: everything that can be known wrong about a composed config, before a run.

preflight() composes the first point of a sweep and checks it; check_config() also runs inside
every job (on the resolved config), so a run started some other way is checked the same way.
"""

import difflib
from pathlib import Path

from lightdist.config import resolvers
from lightdist.config.compose import compose, compose_checked, first_point
from lightdist.errors import ConfigError
from lightdist.sweeps import FOLD_KEY


def check_config(cfg, run_dir: Path | None = None, allocation: dict | None = None) -> None:
    """Everything that can be known wrong about a composed config without running it.

    `allocation` (gpus, cores, tasks_per_node, nodes) describes the machines of a job to be
    submitted; by default the devices are checked against this machine.
    """

    from lightdist.checkpoints import resolve_ckpt_path
    from lightdist.config.validate import check_devices, check_precision, check_targets
    from lightdist.distributed.comm_hooks import check_strategy_comm_hook
    from lightdist.tasks.transfer import check_sources

    missing = missing_keys(cfg)
    if missing:
        raise ConfigError(f"missing required value(s): {', '.join(missing)}",
                          hint=" ".join(f"{key}=<value>" for key in missing))
    check_strategy_comm_hook(cfg.trainer, cfg.get("strategy"))
    check_targets(cfg)
    check_sources(cfg)
    check_devices(cfg.trainer, **(allocation or {}), threads_per_rank=cfg.get("threads_per_rank", "auto"))
    check_precision(cfg.trainer, cfg.get("strategy"))
    check_clipping(cfg.trainer, cfg.get("strategy"))
    check_replicas(cfg.trainer, cfg.get("strategy"))
    check_compile(cfg.get("compile"), cfg.get("strategy"))
    resolve_ckpt_path(cfg.get("ckpt_path"), run_dir or planned_run_dir(cfg))


def check_clipping(trainer, strategy) -> None:
    """Lightning's FSDP clips gradients by value only; by norm it stops at the first step."""
    from lightdist.config.validate import strategy_family

    if (trainer.get("gradient_clip_val") and trainer.get("gradient_clip_algorithm", "norm") == "norm"
            and strategy_family(strategy) == "fsdp"):
        raise ConfigError(f"trainer.gradient_clip_val={trainer.gradient_clip_val} clips by norm, which Lightning's "
                          "FSDP does not support", hint="set trainer.gradient_clip_val=null (or "
                          "trainer.gradient_clip_algorithm=value) with strategy=fsdp")


def check_compile(compile, strategy) -> None:
    """What torch.compile cannot do under a strategy (compile=true or a backend's name)."""
    from lightdist.config.validate import strategy_family

    if not compile:
        return
    if strategy_family(strategy) == "fsdp":
        # measured: dynamo fails on FSDP1's flat parameters in the first backward (torch 2.14)
        raise ConfigError("compile does not work with strategy=fsdp (FSDP1)",
                          hint="use strategy=fsdp2, which compiles each block and then shards it, or compile=false")
    bucket_cap_mb = (strategy or {}).get("bucket_cap_mb")
    if bucket_cap_mb is not None and bucket_cap_mb < 1:
        # torch._dynamo's DDP optimizer keeps DDP's first bucket (1 MiB) and refuses smaller caps
        raise ConfigError(f"compile under DDP needs strategy.bucket_cap_mb >= 1, not {bucket_cap_mb}: the compiled "
                          "graph is split at DDP's buckets, the first of which is 1 MiB",
                          hint="set strategy.bucket_cap_mb=1 or more, or compile=false")


def check_replicas(trainer, strategy) -> None:
    """FSDP2's HSDP replicas: `nodes`, or a count that divides the ranks (when the config says how many)."""
    from lightdist.config.validate import strategy_family

    if strategy_family(strategy) != "fsdp2":
        return
    replicas = strategy.get("replicas", 1)
    if replicas == "nodes":
        return
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    ranks = int(devices) * int(nodes) if str(devices).isdigit() and str(nodes).isdigit() else None
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1 or (ranks and ranks % replicas):
        raise ConfigError(f"strategy.replicas={replicas} must be 'nodes' or a count >= 1 that divides the number "
                          f"of ranks{f' ({ranks})' if ranks else ''}", hint="strategy.replicas=1 (no replication) or "
                          "strategy.replicas=nodes (shard within a node, replicate across nodes)")


def missing_keys(node, path: str = "") -> list[str]:
    """Keys left at `???` or `${lightdist.required:...}` (a value the user must give), found without
    resolving interpolations."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    from lightdist.compat import child_node, raw_value

    found = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            child = child_node(node, key)
            where = f"{path}.{key}" if path else str(key)
            if child is None:
                continue
            if OmegaConf.is_interpolation(node, key):
                if str(raw_value(node, key)).startswith("${lightdist.required:"):
                    found.append(where)
                continue
            if OmegaConf.is_missing(node, key):
                found.append(where)
            elif isinstance(child, (DictConfig, ListConfig)):
                found += missing_keys(child, where)
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            found += missing_keys(child_node(node, i), f"{path}[{i}]")
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
    from lightdist.config.building import building
    from lightdist.runs import build_datamodule

    cfg = _outside_job(cfg)
    with building("data", cfg.data):
        datamodule = build_datamodule(cfg)  # with the model's own tokenizer, when it names one
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

    from lightdist.config.building import building, instantiate_with_facts
    from lightdist.tasks.optim import build_optimizer

    cfg = _outside_job(cfg)
    if datamodule is not None and getattr(datamodule, "PREFLIGHT_FACTS", False) and cfg.get("model"):
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
              allocation: dict | None = None, notes: list | None = None, composed=None):
    """The composed config, checked. `composed(cfg)` is called once it is composed, before the checks
    (which import the libraries its targets need: seconds)."""
    point = first_point(overrides)
    cfg = compose_checked(point, config_name, notes)
    base = compose([], config_name)
    unknown = sorted(set(cfg.keys()) - set(base.keys()))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(base.keys()), n=1)
        raise ConfigError(f"unknown top-level key(s): {', '.join(unknown)}"
                          + (f"; did you mean {close[0]}?" if close else ""),
                          hint=f"top-level keys: {', '.join(sorted(base.keys()))}")
    if composed is not None:
        composed(cfg)
    # data.kfold.k alone becomes one job per fold: check the first of them.
    checked = compose([*point, f"{FOLD_KEY}=0"], config_name) if unswept_folds(cfg, point) else cfg
    check_config(checked, allocation=allocation)
    check_wiring(checked)
    datamodule = check_data(checked) if with_data else None
    check_builds(checked, datamodule)
    return cfg


def unswept_folds(cfg, overrides: list[str]) -> int:
    """k when k-fold is on and no fold is chosen (nor swept), else 0."""
    if any(o.lstrip("+~").startswith(f"{FOLD_KEY}=") for o in overrides):
        return 0
    if cfg is None:
        return 0
    kfold = cfg.data.get("kfold") or {}
    return int(kfold["k"]) if kfold.get("k") is not None and kfold.get("fold") is None else 0
