"""Switching a config group on top of an experiment: `+experiment=fashion_mnist_cnn scheduler=cosine`.

An experiment picks an option per group (`override /scheduler: one_cycle`) and sets keys for
it (`scheduler.pct_start`). Hydra merges those keys onto whatever option the command line
chose instead, where they may mean nothing (`pct_start` for cosine) or turn `none` into a
stray dict. After composition, each group switched away from the experiment's choice keeps
only the experiment's keys that the chosen option knows (its yaml has them or its `_target_`
accepts them, such as trainer.max_epochs or optimizer.lr) for a value of the same kind (a list
of widths is no single width); the rest are dropped, and one info line names them. Keys given
on the command line are never dropped (the checks judge them).

Sharding strategies also turn channels_last off, with a warning: FSDP and DeepSpeed need
contiguous parameters, and channels_last is only a speed option.

The same adaptation runs on every composition: the preflight (lightdist.config.compose) and
the Hydra job itself (each point of a multirun), from the choices Hydra recorded.
"""

import functools
import logging
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from lightdist.config import config_dir

log = logging.getLogger(__name__)

_PACKAGE = re.compile(r"^#\s*@package\s+(\S+)", re.MULTILINE)


@functools.cache
def _load(relative: str) -> tuple[dict, str | None]:
    """(content, @package header) of conf/<relative>.yaml; ({}, None) when there is no such file."""
    path = Path(config_dir()) / f"{relative}.yaml"
    if not path.is_file():
        return {}, None
    text = path.read_text()
    header = _PACKAGE.search(text.split("\n\n", 1)[0])
    return OmegaConf.to_container(OmegaConf.create(text)) or {}, header.group(1) if header else None


def _defaults(content: dict) -> dict[str, str]:
    """{group: option} of a defaults list (`- data: x`, `- override /data: x`)."""
    picked = {}
    for entry in content.get("defaults") or []:
        if isinstance(entry, dict):
            for key, value in entry.items():
                group = key.removeprefix("override ").strip().lstrip("/")
                if isinstance(value, str) and "@" not in group:
                    picked[group] = value
    return picked


def _option_node(group: str, option: str) -> Any:
    """What conf/<group>/<option>.yaml itself puts at `group` (None for `none`-style options)."""
    content, package = _load(f"{group}/{option}")
    if package == "_global_":
        return OmegaConf.select(OmegaConf.create(content), group.replace("/", "."))
    return {k: v for k, v in content.items() if k != "defaults"}


def _user_keys(overrides: list[str]) -> set[str]:
    return {o.lstrip("+~").split("=", 1)[0] for o in overrides}


def _shape(value: Any) -> str:
    return "container" if isinstance(value, (list, tuple, dict)) else "text" if isinstance(value, str) else "scalar"


def _fits(option_node: Any, composed: Any, key: str, value: Any) -> bool:
    """The chosen option has `key` (in its yaml, or its _target_ takes it) for a value of this kind:
    a list of widths is no width, and a pooling one model offers may be no choice of another's."""
    from lightdist.config.validate import _literal_choices as literal_choices
    from lightdist.config.validate import signature_of

    target = composed.get("_target_") if isinstance(composed, DictConfig) else None
    params, hints, var_kw = signature_of(target) if target else ({}, {}, False)
    if key in params:
        choices = literal_choices(hints.get(key, params[key].annotation))
        if choices is not None and value not in choices:
            return False
    if isinstance(option_node, dict) and key in option_node:
        default = option_node[key]
    elif key in params:
        default = params[key].default
        if default is params[key].empty:
            return True
    else:
        return var_kw
    return default is None or value is None or _shape(default) == _shape(value)


# Keys that name what a target builds (model.name: an architecture of one library) mean nothing to
# another target, whatever the type of their value.
_NAMING_KEYS = ("name",)


def _names_for_another_target(group: str, planned: str, node: Any, key: str) -> bool:
    if key not in _NAMING_KEYS or not isinstance(node, DictConfig):
        return False
    planned_node = _option_node(group, planned)
    planned_target = planned_node.get("_target_") if isinstance(planned_node, dict) else None
    return planned_target != node.get("_target_")


def drop_stale_experiment_keys(cfg: DictConfig, choices: dict, overrides: list[str],
                               config_name: str = "config") -> str | None:
    """Adapt `cfg` in place to the groups switched away from its experiment; the info line, or None."""
    experiment = choices.get("experiment")
    if not experiment:
        return None
    content, _ = _load(f"experiment/{experiment}")
    intended = {**_defaults(_load(config_name)[0]), **_defaults(content)}
    user = _user_keys(overrides)
    dropped = []
    for group, settings in content.items():
        chosen, planned = choices.get(group), intended.get(group)
        if not isinstance(settings, dict) or chosen is None or planned is None or chosen == planned:
            continue
        option_node = _option_node(group, chosen)
        with open_dict(cfg):
            node = cfg.get(group)
            if option_node is None:  # a `none` option: nothing of the experiment's applies
                if node is not None:
                    cfg[group] = None
                stale = list(settings)
            else:
                stale = [k for k, v in settings.items() if isinstance(node, DictConfig) and k in node
                         and f"{group}.{k}" not in user
                         and (not _fits(option_node, node, k, v) or _names_for_another_target(group, planned, node, k))]
                for key in stale:  # back to the chosen option's own value, or its target's default
                    if isinstance(option_node, dict) and key in option_node:
                        node[key] = option_node[key]
                    else:
                        del node[key]
        if stale:
            keys = ", ".join(f"{group}.{k}" for k in stale)
            dropped.append(f"dropped {keys} (set for {planned}, {group}={chosen} chosen)")
    return f"experiment {experiment}: {'; '.join(dropped)}" if dropped else None


def plain_memory_format_for_sharding(cfg: DictConfig) -> str | None:
    """channels_last (a speed option) off under FSDP/DeepSpeed, which need contiguous parameters."""
    from lightdist.config.validate import strategy_family

    if cfg.get("channels_last") is not True:
        return None
    family = strategy_family(cfg.get("strategy"))
    if family == "ddp":
        return None
    cfg.channels_last = False
    return (f"channels_last=true turned off under {family}: sharding needs contiguous parameters, which "
            "channels_last convolution weights are not (it is only a speed option)")


def adapt(cfg: DictConfig, choices: dict, overrides: list[str], config_name: str = "config") -> list[tuple[int, str]]:
    """Every adaptation of a composed config to its group choices, in place: (log level, message) each."""
    notes = []
    dropped = drop_stale_experiment_keys(cfg, choices, overrides, config_name)
    if dropped:
        notes.append((logging.INFO, dropped))
    memory_format = plain_memory_format_for_sharding(cfg)
    if memory_format:
        notes.append((logging.WARNING, memory_format))
    return notes


def adapt_composed(cfg: DictConfig, config_name: str = "config", notes: list | None = None) -> DictConfig:
    """A config Hydra composed with return_hydra_config=True, adapted, without its `hydra` node;
    what was adapted is appended to `notes` as (log level, message)."""
    choices, overrides = dict(cfg.hydra.runtime.choices), list(cfg.hydra.overrides.task)
    with open_dict(cfg):
        del cfg["hydra"]
    adapted = adapt(cfg, choices, overrides, config_name)
    if notes is not None:
        notes += adapted
    return cfg


def adapt_job(cfg: DictConfig) -> None:
    """Inside a Hydra job (a run or one multirun point): adapt the config Hydra composed, and log why."""
    from hydra.core.hydra_config import HydraConfig

    from lightdist.distributed.ranks import is_rank_zero

    hydra = HydraConfig.get()
    for level, message in adapt(cfg, dict(hydra.runtime.choices), list(hydra.overrides.task), hydra.job.config_name):
        if is_rank_zero():  # ranks started by srun/torchrun compose the same job: said once
            log.log(level, message)
