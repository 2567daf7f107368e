"""The command line: `lightdist [command] [hydra overrides]` and `python -m lightdist`.

    lightdist +experiment=fashion_mnist_cnn trainer=cpu_ddp      # train (the default command)
    lightdist preflight +experiment=cifar_resnet trainer=gpu     # compose and check, run nothing
    lightdist predict run_dir=outputs/<name>/<run> text="..."    # labels and probabilities (JSON lines)

Training is a Hydra app; before Hydra creates any directory the config is composed and
checked once (preflight), so a typo ends in one line naming the fix and leaves nothing
behind.
"""

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightdist.config import config_dir, resolvers
from lightdist.distributed.launch import announce_job_config, child_job_config, isolated_job
from lightdist.distributed.ranks import is_rank_zero
from lightdist.errors import ConfigError, LightdistError

# Hydra flags followed by a value (the rest are switches or `key=value` overrides).
_VALUE_FLAGS = {"-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name",
                "-cd", "--config-dir", "-i", "--info", "-sc", "--shell-completion", "--experimental-rerun"}
_NO_PREFLIGHT = {"-h", "--help", "--hydra-help", "--version", "-i", "--info", "-sc", "--shell-completion",
                 "-cp", "--config-path", "-cd", "--config-dir", "--experimental-rerun"}


def _fail(message: str, code: int = 2) -> None:
    print(f"lightdist: error: {message}", file=sys.stderr)
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
        cause = exc.__cause__
        if isinstance(cause, LightdistError):
            return str(cause)
        first = str(exc).strip().splitlines()
        detail = f": {cause}" if isinstance(cause, (ValueError, TypeError, MisconfigurationException)) else ""
        return (first[0] if first else "could not build an object from the config") + detail
    if isinstance(exc, MisconfigurationException):
        return str(exc).strip().splitlines()[0]
    if isinstance(exc, (HydraException, OmegaConfBaseException)):
        return " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    return None


def guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """Run fn; errors the user can fix become one line and exit 2, bugs keep their traceback."""
    try:
        return fn(*args)
    except Exception as exc:
        message = _user_error(exc)
        if message is None or os.environ.get("LIGHTDIST_DEBUG"):
            raise
        _fail(message + "  [set LIGHTDIST_DEBUG=1 for the traceback]" if not isinstance(exc, LightdistError)
              else message)


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


def compose(overrides: list[str], config_name: str = "config"):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


def _explain_missing_config(exc) -> str:
    group = os.path.dirname(exc.missing_cfg_file) if exc.missing_cfg_file else ""
    name = os.path.basename(exc.missing_cfg_file or "")
    if group:
        options = ", ".join(exc.options or []) or "none"
        return f"unknown {group} '{name}'; available: {options}"
    return str(exc).splitlines()[0]


def check_config(cfg, run_dir: Path | None = None) -> None:
    """Everything that can be known wrong about a composed config without running it."""

    from lightdist.checkpoints import resolve_ckpt_path
    from lightdist.config.validate import check_devices, check_targets

    check_targets(cfg)
    check_devices(cfg.trainer)
    resolve_ckpt_path(cfg.get("ckpt_path"), run_dir or planned_run_dir(cfg))


def planned_run_dir(cfg) -> Path:
    """Before Hydra runs: where this run's directory will be."""
    from omegaconf import OmegaConf

    return Path(resolvers.run_dir(cfg.get("run_dir"), f"{OmegaConf.select(cfg, 'paths.log_dir')}/{cfg.name}"))


def check_data(cfg) -> None:
    """The dataset is there (or downloadable): building the data module and asking for its facts finds out."""
    import copy

    from hydra.utils import instantiate

    cfg = copy.deepcopy(cfg)
    # ${hydra:runtime.output_dir} resolves only inside the Hydra job; data configs may name files in it.
    cfg.paths.output_dir = str(planned_run_dir(cfg))
    instantiate(cfg.data).check_available()


def preflight(overrides: list[str], config_name: str = "config", with_data: bool = True):
    from hydra.errors import ConfigCompositionException, MissingConfigException

    point = _first_point(overrides)
    try:
        cfg = compose(point, config_name)
    except MissingConfigException as exc:
        raise ConfigError(_explain_missing_config(exc)) from exc
    except ConfigCompositionException as exc:
        cause = exc.__cause__
        if isinstance(cause, MissingConfigException):
            raise ConfigError(_explain_missing_config(cause)) from exc
        detail = str(cause).splitlines()[0] if cause is not None else ""
        head = str(exc).splitlines()[0]
        raise ConfigError(f"{head} {detail}".strip()) from exc
    base = compose([], config_name)
    unknown = sorted(set(cfg.keys()) - set(base.keys()))
    if unknown:
        raise ConfigError(f"unknown top-level key(s): {', '.join(unknown)}",
                          hint=f"top-level keys: {', '.join(sorted(base.keys()))}")
    check_config(cfg)
    if with_data:
        check_data(cfg)
    return cfg


# -- the Hydra job ----------------------------------------------------------------------------------
def run_job(cfg) -> Any:
    """One Hydra job (a run, or one point of a multirun) on the rank(s) that composed it."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from lightdist import run_dir as rd
    from lightdist import train

    with isolated_job():
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        check_config(cfg, run_dir)
        if is_rank_zero():
            _log_libraries_to_job_file()
            announce_job_config(rd.save_config(run_dir, cfg))
            rd.start_segment(run_dir, world_size=_world_size(cfg))
        summary = train.run(cfg, run_dir)
        if is_rank_zero():
            rd.end_segment(run_dir, global_step=summary["global_step"], interrupted=summary["interrupted"])
        metric = cfg.get("optimized_metric")
        return summary["callback_metrics"].get(metric) if metric else None


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
    if not any(f in _NO_PREFLIGHT for f in flags) and "--cfg" not in flags and "-c" not in flags:
        guarded(preflight, overrides, config_name)
    if not is_rank_zero():
        # Ranks > 0 started by srun/torchrun compose the same config and run directory but
        # write nothing there: no .hydra/ copy, no log file.
        overrides += ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    sys.argv = [sys.argv[0], *flags, *overrides]
    _hydra_app(config_name)()


def run_child(config_path: Path) -> None:
    """A rank > 0 started by Lightning's launcher: run rank 0's job from its resolved config."""
    from lightdist import run_dir as rd
    from lightdist import train

    cfg = rd.load_config(config_path)
    train.run(cfg, Path(cfg.paths.output_dir))


def preflight_command(argv: list[str]) -> None:
    flags, overrides = split_args(argv)
    cfg = guarded(preflight, overrides, _flag_value(flags, "-cn", "--config-name") or "config")
    print(f"ok: {cfg.name}: data={cfg.data.get('dataset', cfg.data._target_)} "
          f"model={cfg.model._target_.rsplit('.', 1)[-1]} trainer.accelerator={cfg.trainer.accelerator} "
          f"devices={cfg.trainer.devices} num_nodes={cfg.trainer.num_nodes} precision={cfg.trainer.precision}")


def predict_command(argv: list[str]) -> None:
    from lightdist.predict import predict_command as run

    run(argv)


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "train": train_command,
    "preflight": preflight_command,
    "predict": predict_command,
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
        return
    train_command(argv)


if __name__ == "__main__":
    main()
