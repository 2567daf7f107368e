"""Hydra composition outside a Hydra app, and the arguments of every command.

compose() gives the config a job with these overrides runs; compose_checked() turns Hydra's
composition errors into one ConfigError naming the fix. command_args() splits a command's own
`key=value` options (declared once, as a dataclass) from the training overrides that follow them.
"""

import dataclasses
import difflib
import functools
import os
import types
import typing
from collections.abc import Callable
from typing import Any

from lightdist.config import config_dir
from lightdist.errors import ConfigError

# Hydra flags followed by a value (the rest are switches or `key=value` overrides).
_VALUE_FLAGS = {"-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name",
                "-cd", "--config-dir", "-i", "--info", "-sc", "--shell-completion", "--experimental-rerun"}


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


def flag_value(flags: list[str], *names: str) -> str | None:
    for i, flag in enumerate(flags):
        if flag in names and i + 1 < len(flags):
            return flags[i + 1]
    return None


def first_point(overrides: list[str]) -> list[str]:
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


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """Every point of a Hydra sweep, in the order Hydra's basic sweeper runs them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from lightdist.compat import basic_sweep_batches

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [point for batch in basic_sweep_batches(parsed) for point in batch]


def with_run_overrides(overrides: list[str]) -> list[str]:
    """With `run_dir=<an existing run>`: that run's own overrides first, then these (which win on a key both set).

    Resuming with `run_dir=<dir> ckpt_path=last` alone must rebuild the run it continues (its
    experiment, model, data), not the default config: the checkpoint would not fit it, and the
    run's config.yaml would be replaced by another run's. Hydra keeps each run's command-line
    overrides in <run>/.hydra/overrides.yaml.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parser = OverridesParser.create()
    given = parser.parse_overrides(overrides)
    run_dir = next((o.value() for o in given if o.key_or_group == "run_dir" and not o.is_sweep_override()), None)
    saved_file = os.path.join(os.path.expanduser(str(run_dir)), ".hydra", "overrides.yaml") if run_dir else None
    if saved_file is None or not os.path.isfile(saved_file):
        return overrides
    try:
        saved = [str(line) for line in OmegaConf.to_container(OmegaConf.load(saved_file))]
        saved_parsed = parser.parse_overrides(saved)
    except Exception as exc:
        raise ConfigError(f"cannot read the run's overrides in {saved_file} ({str(exc).splitlines()[0]})",
                          hint="restore that file, or give the run's full command line again") from exc

    def key(override) -> tuple[str, str | None]:
        return override.key_or_group, override.package

    mine = {key(o) for o in given}
    return [o.input_line for o in saved_parsed if key(o) not in mine] + overrides


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

    from lightdist.compat import raw_value
    from lightdist.config.validate import signature_of, unknown_key

    parent = getattr(cause, "parent_node", None)
    if not isinstance(cause, (ConfigAttributeError, ConfigKeyError)) or not isinstance(parent, DictConfig) \
            or not getattr(cause, "full_key", None):
        return None
    valid = set(parent.keys()) - {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
    target = raw_value(parent, "_target_") if "_target_" in parent else None
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


# -- a command's own options ----------------------------------------------------------------------
def training_key(key: str) -> bool:
    """Whether `key` (of a `key=value`) is an override of the training config: a dotted key, an
    added/deleted one, a config group or a top-level key of conf/config.yaml."""
    if key.startswith(("+", "~")) or "." in key or "/" in key:
        return True
    return key in _training_top_level()


@functools.cache
def _training_top_level() -> frozenset[str]:
    from omegaconf import OmegaConf

    root = config_dir()
    groups = {p for p in os.listdir(root) if os.path.isdir(os.path.join(root, p))}
    return frozenset(groups | set(OmegaConf.load(os.path.join(root, "config.yaml")).keys()))


@dataclasses.dataclass
class CommandArgs:
    options: Any  # the command's options dataclass, filled in
    given: list[str]  # the options as given (key=value), aliases spelled as keys
    rest: list[str]  # what belongs to the command's config: overrides and Hydra flags


def command_args(argv: list[str], command: str, schema: type, *, aliases: dict[str, str] | None = None,
                 positional: str | None = None, rest: Callable[[str], bool] | None = None, flags: bool = False,
                 rest_hint: str = "", unknown: str = "unknown {command} key '{key}'") -> CommandArgs:
    """Split argv into the `key=value` options of `schema` (a dataclass) and the rest.

    Values are converted to the fields' types (int, float, bool, str, Optional, Literal choices;
    list fields take repeated keys). `aliases` maps older flags (`--index 3`, `--index=3`,
    `--count`) to keys; `positional` names the key a bare argument gives. `rest(key)` says which
    other keys belong to the command's config (None: none do), `flags` whether other `-x` arguments
    do (Hydra's flags); anything else is refused, naming the nearest option. A lone `--` is ignored.
    """
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    aliases = aliases or {}
    values: dict[str, Any] = {}
    given: list[str] = []
    others: list[str] = []

    def take(key: str, raw: str) -> None:
        value = _convert(command, key, raw, hints[key])
        if _is_list(hints[key]):
            values.setdefault(key, []).extend(value)
        else:
            values[key] = value
        given.append(f"{key}={raw}")

    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            continue
        name, sep, raw = arg.partition("=")
        if name in aliases:
            key = aliases[name]
            if hints[key] is bool and not sep:
                raw = "true"
            elif not sep:
                if i >= len(argv):
                    raise ConfigError(f"{command} {name} needs a value", hint=f"or {key}=<value>")
                raw, i = argv[i], i + 1
            take(key, raw)
        elif arg.startswith("-"):
            if not flags:
                raise ConfigError(f"unexpected {command} argument '{arg}'", hint="arguments are key=value")
            others.append(arg)
        elif not sep and positional is not None and positional not in values:
            take(positional, arg)
        elif sep and name in fields:
            take(name, raw)
        elif sep and rest is not None and rest(name):
            others.append(arg)
        else:
            keys = sorted({*fields, *(a for a in aliases if not a.startswith("-"))})
            close = difflib.get_close_matches(name, keys, n=1)
            hint = "; ".join(filter(None, [f"{command} keys: {', '.join(keys)}", rest_hint,
                                           f"did you mean {close[0]}?" if close else ""]))
            raise ConfigError(unknown.format(command=command, key=name if sep else arg), hint=hint)
    for name, f in fields.items():
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{command} needs {name}=<value>")
    return CommandArgs(schema(**values), given, others)


def _is_list(kind: Any) -> bool:
    return typing.get_origin(kind) is list


def _convert(command: str, key: str, raw: str, kind: Any) -> Any:
    """`raw` as a value of type `kind`; ConfigError naming the key and the expected type otherwise."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is list:
        return [_convert(command, key, raw, args[0])]
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and raw.lower() in ("null", "none"):
            return None
        kind = next(a for a in args if a is not type(None))
        return _convert(command, key, raw, kind)
    if origin is typing.Literal:
        if raw not in args:
            raise ConfigError(f"invalid value '{raw}' for '{key}'", hint=f"choose from {', '.join(map(str, args))}")
        return raw
    try:
        if kind is bool:
            return {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}[raw.lower()]
        return kind(raw)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{command} {key}={raw}: '{key}' must be {getattr(kind, '__name__', kind)}") from exc
