"""Check a composed config before anything runs: unknown keys, wrong types, impossible values.

Hydra already rejects overrides of keys that do not exist (without '+') and unknown
group options. What remains is checked here against the signature of every `_target_`
in the config: a key the target does not accept is an error naming the accepted keys;
a value outside a `Literal[...]` annotation is an error naming the allowed values; a
value of the wrong basic type (int, float, bool, str) is an error. The signature is the
schema, so a new model or data module is validated without writing a schema for it.
"""

import difflib
import functools
import inspect
import types
import typing
from collections.abc import Iterable, Iterator
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from lightdist.errors import ConfigError

_HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


@functools.cache
def signature_of(target: str) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """(parameters, type hints, accepts **kwargs) of a `_target_` class or function."""
    try:
        obj = get_object(target)
    except Exception as exc:
        raise ConfigError(f"_target_ '{target}' cannot be imported ({exc})") from exc
    fn = obj.__init__ if inspect.isclass(obj) else obj
    params = dict(inspect.signature(fn).parameters)
    params.pop("self", None)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # forward references that do not resolve: fall back to no type checks
        hints = {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {k: p for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return named, hints, var_kw


def accepted_kwargs(target: str, candidates: dict[str, Any]) -> dict[str, Any]:
    """The subset of `candidates` that the target's signature accepts by name."""
    params, _, var_kw = signature_of(target)
    return {k: v for k, v in candidates.items() if var_kw or k in params}


def _targets(node: Any, path: str) -> Iterator[tuple[str, DictConfig]]:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node.keys():
            if not OmegaConf.is_interpolation(node, key):
                value = node[key] if not OmegaConf.is_missing(node, key) else None
                yield from _targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from _targets(item, f"{path}[{i}]")


def _literal_choices(hint: Any) -> list | None:
    """All allowed values when `hint` is a Literal or a union of Literals (and None)."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return list(typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        choices = []
        for arm in typing.get_args(hint):
            if arm is type(None):
                choices.append(None)
                continue
            sub = _literal_choices(arm)
            if sub is None:
                return None
            choices.extend(sub)
        return choices
    return None


def _matches(value: Any, hint: Any) -> bool:
    """A loose type check for the basic types a user types on the command line."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if value is None:
        origin = typing.get_origin(hint)
        return origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arm) for arm in typing.get_args(hint) if arm is not type(None))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True  # containers, modules, callables: left to the target itself


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # Optional[int] -> "int or None"
        return " or ".join("None" if arm is type(None) else _describe(arm) for arm in typing.get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# Keys that left their node (old key or node -> new one): named as moved rather than guessed at.
MOVED_KEYS = {f"task.{k}": f"transfer.{k}" for k in
              ("init_from", "init_ckpt", "freeze_backbone_epochs", "backbone_lr_factor", "train_bn")} | {
    "task.distill": "distill", "task.channels_last": "channels_last", "task.compile": "compile"}
MOVED_NODES = {"task.distill"}


def moved_key(where: str) -> str | None:
    """The new name of `where` (dotted) when it, or a node above it, has moved."""
    for old, new in MOVED_KEYS.items():
        if where == old or where.startswith(old + "."):
            return new + where[len(old):]
    return None


def unknown_key(where: str, valid: Iterable[str], target: str | None = None) -> ConfigError:
    """The error for key `where` (dotted) that is none of `valid`, with the nearest valid one as a guess."""
    moved = moved_key(where)
    if moved:
        key = f"{moved}.<key>" if where in MOVED_NODES else moved
        return ConfigError(f"'{where}' has moved to '{moved}'", hint=f"pass {key}=<value> instead")
    parent, _, key = where.rpartition(".")
    valid = sorted(str(k) for k in valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    guess = f"; did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""
    return ConfigError(f"unknown key '{where}'{f' for {target}' if target else ''}{guess}",
                       hint=f"valid keys {f'under {parent!r}' if parent else 'at the top level'}: {', '.join(valid)}")


def check_targets(cfg: DictConfig) -> None:
    for path, node in _targets(cfg, ""):
        target = node["_target_"]
        params, hints, var_kw = signature_of(target)
        for key in node.keys():
            if key in _HYDRA_KEYS:
                continue
            where = f"{path}.{key}" if path else str(key)
            if where == "model.data_tokenizer":  # the data module's tokenizer (runs.build_datamodule)
                continue
            if key not in params:
                if var_kw:
                    continue
                raise unknown_key(where, params, target)
            if OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key):
                continue
            value = node[key]
            if isinstance(value, (DictConfig, ListConfig)):
                continue
            hint = hints.get(key, params[key].annotation)
            choices = _literal_choices(hint)
            if choices is not None:
                if value not in choices:
                    raise ConfigError(
                        f"invalid value {value!r} for '{where}'",
                        hint=f"allowed: {', '.join(repr(c) for c in choices)}",
                    )
                continue
            if not _matches(value, hint):
                raise ConfigError(
                    f"'{where}' must be {_describe(hint)}, got {value!r} ({type(value).__name__})"
                )


_FP16 = {16, "16", "16-mixed", "16-true"}


def strategy_family(strategy: DictConfig | None) -> str:
    """"fsdp2" | "fsdp" (FSDP1) | "deepspeed" | "ddp", from the strategy group's _target_ path."""
    target = ((strategy or {}).get("_target_") or "").lower()
    return next((family for family in ("fsdp2", "fsdp", "deepspeed") if family in target), "ddp")


def check_precision(trainer: DictConfig, strategy: DictConfig | None) -> None:
    """Combinations of precision and strategy that cannot run on CPU (the GPU ones are Lightning's to judge)."""
    if trainer.get("accelerator") != "cpu":
        return
    precision, family = str(trainer.get("precision")), strategy_family(strategy)
    if family == "fsdp" and precision.startswith("bf16"):
        raise ConfigError(f"trainer.precision={precision} with strategy=fsdp is not supported on CPU "
                          "(FSDP's mixed precision evaluates incorrectly there)",
                          hint="use trainer.precision=32-true for FSDP on CPU; bf16 FSDP runs on GPUs")


def check_devices(trainer: DictConfig, gpus: int | None = None, cores: int | None = None,
                  tasks_per_node: int | None = None, nodes: int | None = None,
                  threads_per_rank: int | str = "auto") -> None:
    """Refuse device requests the machine cannot give, before any process starts.

    By default "the machine" is this one. For a job submitted elsewhere (launch.sh slurm),
    `gpus`/`cores` describe one node of the requested allocation and `tasks_per_node`/`nodes`
    its layout, which trainer.devices/trainer.num_nodes must match.
    """
    import torch

    from lightdist.distributed.ranks import launched_externally
    from lightdist.distributed.threads import available_cores

    devices, accelerator = trainer.get("devices", "auto"), trainer.get("accelerator", "auto")
    if isinstance(devices, bool) or not (
        devices in ("auto", -1) or (isinstance(devices, int) and devices >= 1)
        or (isinstance(devices, (list, ListConfig)) and len(devices) > 0)
        or (isinstance(devices, str) and devices.strip().lstrip("-").isdigit() and int(devices) >= 1)
    ):
        raise ConfigError(f"trainer.devices={devices!r} is not a device count",
                          hint="use a count >= 1, -1 or 'auto' for all devices, or a list of device indices")
    count = len(devices) if isinstance(devices, (list, ListConfig)) else int(devices) if devices not in (
        "auto", -1) else None
    num_nodes = trainer.get("num_nodes", 1)
    if num_nodes < 1:
        raise ConfigError(f"trainer.num_nodes={num_nodes} must be >= 1")
    if tasks_per_node is not None and count is not None and count != tasks_per_node:
        raise ConfigError(f"trainer.devices={count} but the job runs {tasks_per_node} task(s) per node",
                          hint="one task per device: drop trainer.devices from the overrides (the template "
                               "derives it) or change the tasks/GPUs per node")
    if nodes is not None and num_nodes != nodes:
        raise ConfigError(f"trainer.num_nodes={num_nodes} but the job asks for {nodes} node(s)",
                          hint="drop trainer.num_nodes from the overrides, or change the job's node count (sbatch --nodes, preflight nodes=)")
    where = "this machine" if gpus is None else "each node of the requested allocation"
    if accelerator in ("gpu", "cuda"):
        gpus = torch.cuda.device_count() if gpus is None else gpus
        if gpus == 0:
            raise ConfigError(f"trainer=gpu needs CUDA GPUs but {where} has none",
                              hint="use trainer=cpu, or trainer=cpu_ddp for multi-process DDP over gloo")
        if count is not None and count > gpus:
            raise ConfigError(f"trainer.devices={count} but {where} has {gpus} CUDA GPU(s)",
                              hint=f"use trainer.devices<={gpus}, or trainer.num_nodes to spread over nodes")
    if accelerator == "cpu":
        cores = available_cores() if cores is None else cores
        # Ranks started by srun/torchrun each got their own cores from the allocation.
        # More ranks than cores is refused unless asked for with one thread each (threads_per_rank=1):
        # then it is slower but sound, e.g. 4 gloo ranks on 2 cores to test a resume at world size 4.
        if (tasks_per_node is None and not launched_externally() and count is not None and count > cores
                and str(threads_per_rank) != "1"):
            raise ConfigError(f"trainer.devices={count} CPU processes but {where} gives {cores} core(s)",
                              hint=f"use trainer.devices<={cores}, or threads_per_rank=1 to run them anyway "
                                   "(oversubscribed, slower)")
        if trainer.get("sync_batchnorm"):
            raise ConfigError("trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm is CUDA-only)",
                              hint="on CPU use model.norm=group where the model offers it, or leave it false")
        if trainer.get("precision") in _FP16:
            raise ConfigError(f"trainer.precision={trainer.precision} (float16) needs a GPU",
                              hint="on CPU use trainer.precision=bf16-mixed or 32")
